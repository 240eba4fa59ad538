"""How far the activation store's shuffle window reaches, and what it does to a trained SAE.

A cache shard holds consecutive contexts of a few documents. This trains the same SAE on the
same cache through ActivationStore.from_cache with windows of one shard (how the store read
caches before) and the default window (ActivationStore.MIX_BYTES), and scores each on held-out
rows of another cache. Example (the demo's cache and SAE, scored on gemma's held-out cache):

    .venv/bin/python benchmarks/shuffling.py --cache demo_out/cache \\
        --heldout /work/cache/l6-heldout --tokens 300000 --width 2048 --target-l0 32 \\
        --max-frequency 0.4 --out benchmarks/results-shuffling-cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from recipes import load_rows

import saelab
from saelab.data import ActivationStore
from saelab.train.config import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="Training activation cache folder.")
    parser.add_argument("--heldout", required=True, help="Held-out activation cache folder.")
    parser.add_argument("--heldout-tokens", type=int, default=50_000, help="Held-out tokens.")
    parser.add_argument("--tokens", type=int, default=300_000, help="Training tokens.")
    parser.add_argument("--width", type=int, default=2048, help="Latents.")
    parser.add_argument("--target-l0", type=float, default=32, help="JumpReLU target L0.")
    parser.add_argument("--max-frequency", type=float, default=1.0, help="JumpReLU cap.")
    parser.add_argument("--seeds", default="0", help="Comma-separated seeds.")
    parser.add_argument("--out", required=True, help="JSON lines to append to.")
    args = parser.parse_args()
    held = load_rows(args.heldout, args.heldout_tokens)
    for seed in map(int, args.seeds.split(",")):
        for window, mix_tokens in (("one shard", 1), ("default", None)):
            sae = saelab.create_sae(
                "jumprelu", held.shape[1], args.width, seed=seed,
                target_l0=args.target_l0, max_frequency=args.max_frequency,
            )  # fmt: skip
            config = TrainConfig(total_tokens=args.tokens, seed=seed)
            store = ActivationStore.from_cache(
                args.cache, batch_size=config.batch_size, seed=seed, device="cpu",
                mix_tokens=mix_tokens,
            )  # fmt: skip
            start = time.perf_counter()
            saelab.train(sae, store, config)
            metrics = saelab.evaluate(sae, held)
            with torch.no_grad():
                over_half = int(((sae.encode(held) != 0).float().mean(0) > 0.5).sum())
            row = {
                "window": window,
                "groups_per_epoch": store.source.groups,
                "seed": seed,
                "cache": args.cache,
                "tokens": args.tokens,
                "width": args.width,
                "target_l0": args.target_l0,
                "max_frequency": args.max_frequency,
                "l0": round(metrics["l0"], 2),
                "fvu": round(metrics["fvu"], 4),
                "dead_fraction": round(metrics["dead_fraction"], 4),
                "over_half": over_half,
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
