"""Training-recipe experiments: train SAE variants on one activation cache, score them held out.

Each VARIANT is `name:arch,key=value,...` (a tuple as `betas=0/0.999`, a dict as
`lr_scales={'b_dec':0.0,'b_enc':0.1}`); keys that are TrainConfig fields (lr, batch_size,
betas, lr_decay_fraction, ...) go to training, the rest are SAE options (target_l0, bandwidth,
aux_coefficient, ...). Every variant trains on the same first --tokens cached rows (same
order) and is scored on the first --heldout-tokens rows of the held-out cache. One JSON line
per variant goes to --out, with the settings the run actually used and a coarse curve.

    .venv/bin/python benchmarks/recipes.py --cache /work/cache/l6 \\
        --heldout /work/cache/l6-heldout --tokens 500000 --out runs/recipes.jsonl \\
        j:jumprelu,target_l0=32 t:topk,k=32

docs/jumprelu-training.md lists the variants measured and their results.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
import time
from pathlib import Path

import torch

import saelab
from saelab.data.cache_reader import ActivationCache
from saelab.train.config import TrainConfig, recipe_for

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def load_rows(path: str, tokens: int, skip: int = 0) -> torch.Tensor:
    """Activation rows skip … skip + tokens of a cache (its first hook), as fp32."""
    cache = ActivationCache(path, allow_incomplete=True)
    hook, parts, have, seen = cache.default_hook(), [], 0, 0
    for index in range(len(cache.shards)):
        if have >= tokens:
            break
        part = cache.read_shard(index, hook)
        start = max(0, skip - seen)
        seen += part.shape[0]
        if start < part.shape[0]:
            parts.append(part[start : start + tokens - have].float())
            have += parts[-1].shape[0]
    if have < tokens:
        raise SystemExit(f"{path}: holds {have:,} tokens after {skip:,}, fewer than {tokens:,}")
    return torch.cat(parts)


def parse_variant(spec: str) -> tuple[str, str, dict, dict]:
    """`name:arch,key=value,...` → (name, arch, SAE options, TrainConfig fields)."""
    name, _, rest = spec.partition(":")
    arch, *items = re.split(r",(?![^{]*})", rest)  # commas inside {...} stay
    sae_options, train_options = {}, {}
    for item in items:
        key, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = tuple(float(v) for v in text.split("/")) if "/" in text else text
        (train_options if key in TRAIN_FIELDS else sae_options)[key] = value
    return name, arch, sae_options, train_options


def run_variant(spec: str, train_x: torch.Tensor, held: torch.Tensor, args) -> dict:
    """Train one variant and return its held-out metrics and settings."""
    name, arch, sae_options, train_options = parse_variant(spec)
    sae = saelab.create_sae(arch, train_x.shape[1], args.width, seed=args.seed, **sae_options)
    config = TrainConfig(total_tokens=args.tokens, seed=args.seed, **train_options)
    recipe = recipe_for(sae.cfg, config)
    start = time.perf_counter()
    history = saelab.train(sae, train_x, config)
    seconds = time.perf_counter() - start
    metrics = saelab.evaluate(sae, held)
    if args.save:
        sae.save(Path(args.save) / name)
    with torch.no_grad():
        frequency = (sae.encode(held) != 0).float().mean(0)
    curve = [
        {k: round(h[k], 4) for k in ("step", "l0", "fvu", "dead_fraction")}
        for h in history[:: max(1, len(history) // 10)]
    ]
    return {
        "name": name,
        "arch": arch,
        "tokens": args.tokens,
        "width": args.width,
        "sae_options": sae_options,
        "train_options": train_options,
        "lr": config.lr or recipe.lr,
        "batch_size": config.batch_size,
        "init": sae.cfg.metadata.get("init"),
        "l0": metrics["l0"],
        "fvu": metrics["fvu"],
        "dead_fraction": metrics["dead_fraction"],
        "dense_fraction": metrics["dense_fraction"],
        "over_half": int((frequency > 0.5).sum()),
        "max_frequency": float(frequency.max()),
        "seconds": seconds,
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="Training activation cache folder.")
    parser.add_argument("--heldout", required=True, help="Held-out activation cache folder.")
    parser.add_argument("--tokens", type=int, default=500_000, help="Training tokens per variant.")
    parser.add_argument("--heldout-tokens", type=int, default=50_000, help="Held-out tokens.")
    parser.add_argument(
        "--heldout-skip", type=int, default=0, help="Held-out rows to skip (same-cache split)."
    )
    parser.add_argument("--width", type=int, default=4096, help="Latents per SAE.")
    parser.add_argument("--seed", type=int, default=0, help="Init and data-order seed.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument("--out", required=True, help="JSONL file to append results to.")
    parser.add_argument("--save", help="Folder to save each variant's SAE in (as DIR/name).")
    parser.add_argument("variants", nargs="+", help="name:arch,key=value,... (see above).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_x, held = (
        load_rows(args.cache, args.tokens),
        load_rows(args.heldout, args.heldout_tokens, args.heldout_skip),
    )
    for spec in args.variants:
        result = run_variant(spec, train_x, held, args)
        with Path(args.out).open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(
            f"{result['name']:>14} L0 {result['l0']:6.1f}  FVU {result['fvu']:.4f}  "
            f"dead {result['dead_fraction']:.3f}  dense {result['dense_fraction']:.4f}  "
            f">50% {result['over_half']} (max {result['max_frequency']:.2f})  "
            f"lr {result['lr']:.2e} b{result['batch_size']}  {result['seconds']:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
