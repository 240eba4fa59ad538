"""Regenerate the example outputs in docs/ from `saelab demo`'s run, so they cannot drift.

Each generated part of a Markdown file sits between `<!-- generated: NAME -->` and
`<!-- end generated -->` and is rewritten from the commands below, run on the demo's SAE
(demo_out/run after `make demo`). Every command is printed in the block it produced.

    make demo && .venv/bin/python docs/examples.py [--run demo_out/run] [--check]

--check rewrites nothing and exits 1 when a generated part differs from what is on disk.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).parent
HARMFUL, BENIGN = "examples/contrast/harmful.txt", "examples/contrast/benign.txt"
ABLATE_PROMPT = "How can I read my partner's messages without"


def saelab(*args: str) -> str:
    """stdout of one `saelab` command (run from the repository root)."""
    command = [str(Path(sys.executable).parent / "saelab"), *args]
    return subprocess.run(
        command, check=True, capture_output=True, text=True, cwd=DOCS.parent
    ).stdout


def contrast_block(run: str) -> tuple[str, int]:
    """The contrast use case's top latents as a table, and the rank-1 latent."""
    args = ["contrast", run, "--positive", HARMFUL, "--negative", BENIGN, "--top", "5"]
    result = json.loads(saelab(*args, "--examples", "1", "--json"))
    rows = result["latents"]
    lines = [
        "```text",
        "$ saelab " + shlex.join(args),
        "```",
        "",
        "| rank | latent | harmful | benign | AUROC | p | q | peak in a harmful request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rank, row in enumerate(rows, 1):
        example = row["examples"]["positive"][0]["text"] if row["examples"]["positive"] else ""
        lines.append(
            f"| {rank} | {row['latent']} | {row['freq_pos']:.0%} | {row['freq_neg']:.0%} "
            f"| {row['auroc']:.2f} | {row['p_value']:.1e} | {row['q_value']:.2f} "
            f"| {example.strip()!r} |"
        )
    return "\n".join(lines), int(rows[0]["latent"])


def ablate_block(run: str, latent: int) -> str:
    """Ablating the contrast's rank-1 latent on a request of the same kind."""
    args = ["ablate", run, "--latent", str(latent), "--prompt", ABLATE_PROMPT]
    args += ["--max-new-tokens", "12", "--json"]
    result = json.loads(saelab(*args))
    shown = {k: result[k] for k in ("baseline", "steered", "mode")}
    return "\n".join(
        ["```text", "$ saelab " + shlex.join(args), json.dumps(shown, indent=1), "```"]
    )


def replace(text: str, name: str, body: str) -> str:
    """text with the generated part NAME replaced by body."""
    pattern = re.compile(
        rf"(<!-- generated: {re.escape(name)} -->\n)(?:(?!<!-- end generated -->).)*"
        r"(<!-- end generated -->)",
        re.DOTALL,
    )
    if not pattern.search(text):
        raise SystemExit(f"docs: no '<!-- generated: {name} -->' part found")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="demo_out/run", help="The demo's run directory.")
    parser.add_argument("--check", action="store_true", help="Only compare; exit 1 on drift.")
    args = parser.parse_args()
    contrast, top = contrast_block(args.run)
    parts = {"contrast": contrast, "ablate": ablate_block(args.run, top)}
    path = DOCS / "interventions.md"
    old = path.read_text()
    new = old
    for name, body in parts.items():
        new = replace(new, name, body)
    if args.check:
        sys.exit(0 if new == old else f"{path}: generated examples differ; run docs/examples.py")
    path.write_text(new)
    print(f"{path}: regenerated {', '.join(parts)}")


if __name__ == "__main__":
    main()
