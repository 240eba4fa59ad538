"""Benchmark: raw text → trained SAE on gemma-3-270m, live (LM forward + training) and via a cache.

    .venv/bin/python benchmarks/end_to_end.py [--tokens 65536] [--width 4096] [--arch jumprelu]

Three timed stages, each through the same code as the CLI (`saelab train`, `saelab cache`):
(a) live: `run_training` with --model (the LM runs while the SAE trains, from raw text);
(b) cache: `write_cache` of the same number of tokens (LM forward only, up to the hook);
(c) from cache: `run_training` with --cache (SAE training reading the cache).
Model loading is timed separately (the converted weights are cached after the first run), so
tokens/s are for the work itself. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from saelab.data import write_cache
from saelab.lm import load_model
from saelab.train.pipeline import run_training
from saelab.train.run_config import resolve_run_config


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="gemma-3-270m", help="model name, HF hub id, local dir or .gguf"
    )
    parser.add_argument(
        "--hook", default="blocks.6.hook_resid_post", help="activation hook to train on"
    )
    parser.add_argument(
        "--corpus",
        default="python-stdlib",
        help="built-in corpus name, local text path or hub dataset",
    )
    parser.add_argument("--tokens", type=int, default=65536, help="training tokens per stage")
    parser.add_argument("--width", type=int, default=4096, help="SAE width d_sae")
    parser.add_argument("--arch", default="jumprelu", help="SAE architecture")
    parser.add_argument("--batch-size", type=int, default=1024, help="tokens per SAE training step")
    parser.add_argument("--json", type=Path, help="Also write the summary here.")
    args = parser.parse_args()

    load_s, lm = _timed(lambda: load_model(args.model))
    common = {
        "hooks": [args.hook], "archs": [args.arch], "width": args.width, "tokens": args.tokens,
        "batch_size": args.batch_size, "lr": 1e-3, "checkpoint_every": 10**9,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        live_cfg = resolve_run_config(
            None, common | {"model": args.model, "corpus": args.corpus, "out": str(tmp / "live")}
        )
        live_s, _ = _timed(lambda: run_training(live_cfg, progress=False, log=lambda m: None))
        cache_s, _ = _timed(
            lambda: write_cache(lm, args.hook, args.corpus, tmp / "cache", args.tokens)
        )
        cached_cfg = resolve_run_config(
            None, common | {"cache": str(tmp / "cache"), "out": str(tmp / "cached")}
        )
        train_s, _ = _timed(lambda: run_training(cached_cfg, progress=False, log=lambda m: None))
    summary = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_after": os.getloadavg()[0],
        "torch": torch.__version__,
        "config": vars(args) | {"json": None},
        "model_load_s": load_s,
        "live_s": live_s,
        "live_tok_s": args.tokens / live_s,
        "cache_write_s": cache_s,
        "cache_write_tok_s": args.tokens / cache_s,
        "train_from_cache_s": train_s,
        "train_from_cache_tok_s": args.tokens / train_s,
        "cache_then_train_tok_s": args.tokens / (cache_s + train_s),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
