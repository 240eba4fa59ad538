"""`saelab eval` with and without the cached reference passes (saelab.evals.reference).

Evaluates one SAE three times in one process on the same held-out tokens: all three passes
(--no-reuse-reference), then once to save the reference, then from the saved reference; and
reports tokens/s of each and the largest difference of any metric between the first and last.
Example (the demo's SAE, 8,192 tokens of gemma-3-270m on CPU):

    .venv/bin/python benchmarks/eval_reference.py demo_out/run --model gemma-3-270m \\
        --hook blocks.6.hook_resid_post --out benchmarks/results-eval-reference-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from saelab.evals import reference
from saelab.evals.command import run_eval_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sae", type=Path, help="SAE or run directory.")
    parser.add_argument("--model", required=True, help="Model the SAE reads.")
    parser.add_argument("--hook", required=True, help="Hook point.")
    parser.add_argument("--tokens", type=int, default=8192, help="Held-out tokens.")
    parser.add_argument("--out", required=True, help="JSON file to write.")
    args = parser.parse_args()
    options = {
        "path": args.sae, "model": args.model, "hook": args.hook, "corpus": "python-stdlib",
        "tokens": args.tokens, "batch_size": 8, "context_size": 128, "device": None,
        "dtype": "float32", "seed": 0,
    }  # fmt: skip
    runs, metrics = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        # A fresh reference folder, so that "saving" computes the reference whatever is cached.
        reference.reference_dir = lambda: Path(scratch)
        for name, reuse in (("three passes", False), ("saving", True), ("cached", True)):
            start = time.perf_counter()
            report, _ = run_eval_command(
                **options, out=Path(scratch) / f"{name}.json", reuse_reference=reuse
            )
            seconds = time.perf_counter() - start
            runs[name] = {
                "seconds": round(seconds, 1),
                "tokens_per_s": round(args.tokens / seconds),
            }
            metrics[name] = {k: v for group in report["metrics"].values() for k, v in group.items()}
    diffs = {k: abs(metrics["cached"][k] - v) for k, v in metrics["three passes"].items()}
    result = {
        "command": "benchmarks/eval_reference.py "
        + " ".join(str(a) for a in (args.sae, "--model", args.model, "--hook", args.hook)),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "tokens": args.tokens,
        "runs": runs,
        "speedup_cached_vs_three_passes": round(
            runs["three passes"]["seconds"] / runs["cached"]["seconds"], 2
        ),
        "max_abs_metric_difference": max(diffs.values()),
        "differences": diffs,
    }
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
