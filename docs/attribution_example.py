"""Regenerate docs/attribution.md's worked example on gemma-3-270m, so it cannot drift.

Three JumpReLU SAEs are spliced in together: the demo's (blocks.6, demo_out/run after
`make demo`) and two trained here with the demo's recipe at blocks.3 and blocks.9 of the
residual stream (demo_out/layers; trained once, ~10 min on a 2-core CPU). The example block in
docs/attribution.md sits between `<!-- generated: attribution -->` and `<!-- end generated -->`;
the full `saelab attribute --json` result goes to docs/results/attribution-example.json.

    make demo && .venv/bin/python docs/attribution_example.py [--demo demo_out] [--check]

--check rewrites nothing and exits 1 when the generated block differs from what is on disk.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from saelab.demo import REAL_DEMO
from saelab.interventions.commands import run_attribute
from saelab.train.pipeline import run_training
from saelab.train.run_config import RunConfig

DOCS = Path(__file__).parent
LAYERS = (3, 9)
PROMPT = "for i in range("
TARGET = "1"
TOP, EDGES, CHECK = 3, 12, 20
COMMAND = (
    f"saelab attribute demo_out/layers/* demo_out/run --prompt {PROMPT!r} --target {TARGET!r} "
    f"--top {TOP} --edges {EDGES} --check {CHECK}"
)


def layer_runs(demo: Path) -> list[Path]:
    """The blocks.3 and blocks.9 SAEs trained with the demo's recipe (trained when missing)."""
    out = demo / "layers"
    found = sorted(path.parent.parent for path in out.glob("*/sae/cfg.json"))
    if len(found) == len(LAYERS):
        return found
    d = REAL_DEMO
    cfg = RunConfig(
        out=str(out), model=d["model"], corpus=d["corpus"],
        hooks=[f"blocks.{layer}.hook_resid_post" for layer in LAYERS],
        archs=["jumprelu"], width=d["width"], target_l0=[d["target_l0"]],
        arch_options={"jumprelu": {"max_frequency": d["max_frequency"]}},
        tokens=d["train_tokens"], context_size=d["context_size"], train={"seed": 0},
    )  # fmt: skip
    return [member.directory for member in run_training(cfg)]


def block(report: dict) -> str:
    """The Markdown of the example: metric, the last positions, edges, the ablation check."""
    sites = [site["hook"].split(".hook")[0] for site in report["sites"]]
    metric = report["metric"]
    lines = [
        "```bash",
        COMMAND,
        "```",
        "",
        f"m = log p({metric['target']!r} | {report['prompt']!r}) = {metric['value']:.3f}. "
        f"SAEs in forward order: {', '.join(sites)}.",
        "",
        "| pos | token | top latents: attribution (activation) | "
        + " | ".join(f"error {s}" for s in sites)
        + " |",
        "|---|---|---|" + "---|" * len(sites),
    ]
    for row in report["positions"][1:]:
        cells = "<br>".join(
            f"{sites[n['site']]} #{n['latent']}: {n['attribution']:+.3f} ({n['activation']:.2f})"
            for n in row["latents"]
        )
        errors = " | ".join(f"{e:+.3f}" for e in row["errors"])
        lines.append(f"| {row['position']} | `{row['token']!r}` | {cells} | {errors} |")
    lines += [
        "",
        f"Top {len(report['edges'])} edges:",
        "",
        "| weight | from | to |",
        "|---|---|---|",
    ]
    for edge in report["edges"]:
        ends = []
        for node in (edge["from"], edge["to"]):
            what = "error" if node["latent"] is None else f"#{node['latent']}"
            ends.append(f"{sites[node['site']]} {what} @{node['position']} `{node['token']!r}`")
        lines.append(f"| {edge['weight']:+.4f} | {ends[0]} | {ends[1]} |")
    check = report["check"]
    lines += [
        "",
        f"Zero-ablation check of the top {len(check['rows'])} latents: correlation of the "
        f"estimate (−attribution) with the measured change of m = **{check['correlation']:.3f}**.",
        "",
        "| latent | position | estimate | measured |",
        "|---|---|---|---|",
    ]
    for row in check["rows"]:
        lines.append(
            f"| {sites[row['site']]} #{row['latent']} | {row['position']} | "
            f"{row['estimate']:+.4f} | {row['measured']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo_out"))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    runs = [*layer_runs(args.demo), args.demo / "run"]
    report = run_attribute(runs, prompt=PROMPT, target=TARGET, top=TOP, edges=EDGES, check=CHECK)
    doc = DOCS / "attribution.md"
    text = doc.read_text()
    pattern = re.compile(r"(<!-- generated: attribution -->\n).*?(<!-- end generated -->)", re.S)
    new = pattern.sub(lambda m: m.group(1) + block(report) + m.group(2), text)
    if args.check:
        return int(new != text)
    doc.write_text(new)
    (DOCS / "results" / "attribution-example.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
