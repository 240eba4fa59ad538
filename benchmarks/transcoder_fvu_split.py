"""FVU of a transcoder split into y's few massive dimensions and the rest (diagnostic).

gemma-3-270m's layer-6 MLP output holds ~90% of its variance in 5 of 640 dimensions, so the
FVU of y mostly measures those; this prints both parts for each run, on cached [x | y] rows
(by default 16,384 tokens of the training cache's last shard: a diagnostic, not held out):

    .venv/bin/python benchmarks/transcoder_fvu_split.py --cache /work/cache/l6-mlp RUN [RUN ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import saelab
from saelab.data import ActivationCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--shard", type=int, default=-1, help="shard index (default: the last)")
    parser.add_argument("--tokens", type=int, default=16_384)
    parser.add_argument("--massive", type=int, default=5, help="top-variance dims of y")
    args = parser.parse_args()
    first = saelab.load_sae(args.runs[0])
    cache = ActivationCache(args.cache)
    shard = args.shard % len(cache.shards)
    x, y = (
        cache.read_shard(shard, hook)[: args.tokens].float()
        for hook in (first.cfg.hook_name, first.cfg.target_hook_name)
    )
    centred = y - y.mean(0)
    massive = centred.var(0).argsort(descending=True)[: args.massive]
    rest = torch.ones(y.shape[1], dtype=torch.bool)
    rest[massive] = False
    print(
        f"y variance in the top {args.massive} dims: {float(centred[:, massive].var(0).sum() / centred.var(0).sum()):.3f}"
    )
    for run in args.runs:
        sae = saelab.load_sae(run)
        with torch.no_grad():
            err = (y - sae(x)).pow(2)
            codes = sae.encode(x)
        fvu = [
            float(err[:, m].sum() / centred[:, m].pow(2).sum())
            for m in (slice(None), massive, rest)
        ]
        alive = float((codes > 0).any(0).float().mean())
        print(
            f"{run}: FVU {fvu[0]:.4f}, massive dims {fvu[1]:.4f}, other dims {fvu[2]:.4f}, "
            f"L0 {float((codes > 0).sum(1).float().mean()):.1f}, alive on these tokens {alive:.3f}"
        )


if __name__ == "__main__":
    main()
