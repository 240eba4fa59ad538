"""Whole-run training throughput, peak memory and held-out FVU: saelab vs SAELens and sparsify
(issue 16 item 1).

Each (library, variant) trains one whole run in its own child process, one after another in this
one invocation, on the same rows of one activation cache (the first --tokens rows, the same
seeded batch order), from the library's own default init and recipe at the same width, batch
size and step count: benchmarks/peers.py does the training and scoring (saelab through
saelab.train; SAELens through its SAETrainer; sparsify through its Trainer.fit step), and its
module docstring lists every peer setting. Seconds are training only (data already in memory;
normalisation estimate and init included). Peak RSS is the child's, data rows included;
"training RSS" is how far training raised it above the peak after loading those rows.

    .venv/bin/python benchmarks/train_run.py --cache /work/cache/l6 \\
        --heldout /work/cache/l6-heldout --out benchmarks/results-train-run-cpu.jsonl

saelab's rows use its defaults (on a CPU with AVX512-BF16 or AMX that includes a bf16 encoder
matmul, docs/training.md "Matmul dtype"); the "+fp32" rows repeat JumpReLU and TopK with
--matmul-dtype float32, the full-precision product every CPU uses without native bf16.

Rows already in --out are kept and skipped (a killed run continues); the table is printed at
the end with the ratios of rows measured in the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from quality import read_rows  # benchmarks/quality.py, beside this script

# (library, variant, venv): saelab's rows run in the project venv, the peers in .venv-bench;
# the longest (SAELens) first, so a session that edits code meanwhile measures saelab last.
PLAN = [
    ("saelens", "jumprelu-target", ".venv-bench"),
    ("saelens", "topk", ".venv-bench"),
    ("sparsify", "topk", ".venv-bench"),
    ("saelab", "jumprelu", ".venv"),
    ("saelab", "topk", ".venv"),
    ("saelab", "batchtopk", ".venv"),
    ("saelab", "jumprelu+fp32", ".venv"),
    ("saelab", "topk+fp32", ".venv"),
]
# Variant suffixes: the same training with one setting changed (peers.py --set).
SUFFIXES = {"fp32": ["--set", "matmul_dtype=float32"]}  # float32 encoder matmul on any CPU
# Which peer row each saelab row (by its variant before any "+suffix") is compared with.
PEER_OF = {"jumprelu": "jumprelu-target", "topk": "topk", "batchtopk": "topk"}


def run_one(args: argparse.Namespace, library: str, variant: str, venv: str) -> None:
    """Train one (library, variant) in a child process; append its JSON row to --out."""
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        sys.exit(f"train_run.py: error: {python} not found (see benchmarks/peers.py for set-up)")
    scratch = args.out.with_suffix(".child.jsonl")
    scratch.unlink(missing_ok=True)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    base, _, suffix = variant.partition("+")
    subprocess.run(
        [str(python), "benchmarks/peers.py", "--cache", args.cache, "--heldout", args.heldout,
         "--library", library, "--variant", base, *SUFFIXES.get(suffix, []),
         "--tokens", str(args.tokens),
         "--width", str(args.width), "--k", str(args.k), "--target-l0", str(args.k),
         "--batch-size", str(args.batch_size), "--heldout-tokens", str(args.heldout_tokens),
         "--seed", str(args.seed), "--out", str(scratch)],
        check=True,
    )  # fmt: skip
    row = read_rows(scratch)[0]
    scratch.unlink()
    row.pop("settings")
    row |= {
        "variant": variant,
        "venv": venv,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "child_seconds": time.perf_counter() - start,
    }
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        f"{library} {variant}: {row['tokens_per_s']:,.0f} tokens/s, peak RSS "
        f"{row['peak_rss_mb']:,.0f} MB, FVU {row['fvu']:.4f}, L0 {row['l0']:.1f}",
        flush=True,
    )


def table(rows: list[dict]) -> str:
    """Markdown table; saelab rows carry their ratio to the matching SAELens and sparsify rows."""
    by = {(r["library"], r["variant"]): r for r in rows}
    lines = [
        "| library | variant | tokens/s | vs SAELens | vs sparsify | peak RSS (MB) | "
        "training RSS (MB) | held-out FVU | L0 | dead |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["library"] != "saelab"):
        ratios = ["", ""]
        if r["library"] == "saelab":
            base = r["variant"].partition("+")[0]
            for i, peer in enumerate((("saelens", PEER_OF[base]), ("sparsify", "topk"))):
                if peer in by and (i == 0 or base == "topk"):
                    ratios[i] = f"{r['tokens_per_s'] / by[peer]['tokens_per_s']:.2f}×"
        lines.append(
            f"| {r['library']} | {r['variant']} | {r['tokens_per_s']:,.0f} | {ratios[0]} | "
            f"{ratios[1]} | {r['peak_rss_mb']:,.0f} | {r['training_rss_mb']:,.0f} | "
            f"{r['fvu']:.4f} | {r['l0']:.1f} | {r['dead_fraction']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="training activation cache (saelab format)")
    p.add_argument("--heldout", required=True, help="held-out activation cache, for the FVU")
    p.add_argument("--out", type=Path, required=True, help="JSONL results file (appended)")
    p.add_argument("--tokens", type=int, default=1_000_000, help="training tokens (1M)")
    p.add_argument("--width", type=int, default=16_384, help="latents d_sae (16,384)")
    p.add_argument("--k", type=int, default=32, help="k of TopK/BatchTopK and JumpReLU's target L0")
    p.add_argument("--batch-size", type=int, default=4096, help="tokens per step (4,096)")
    p.add_argument("--heldout-tokens", type=int, default=50_000, help="held-out rows (50,000)")
    p.add_argument("--seed", type=int, default=0, help="data order and init seed (0)")
    p.add_argument(
        "--only", default="", help="comma-separated library:variant entries of the plan to run"
    )
    args = p.parse_args()
    only = {tuple(e.split(":")) for e in args.only.split(",") if e}
    done = {(r["library"], r["variant"]) for r in read_rows(args.out)}
    for library, variant, venv in PLAN:
        if (library, variant) not in done and (not only or (library, variant) in only):
            run_one(args, library, variant, venv)
    print(table(read_rows(args.out)))


if __name__ == "__main__":
    main()
