"""Transcoder experiment: TrainConfig.target_scaling α, each target dimension y_j divided by
σ_j^α in training (folded into the decoder at the end).

gemma-3-270m's layer-6 MLP output keeps ~90% of its variance in 5 of its 640 dimensions, so the
plain loss ‖y − ŷ‖² (α = 0) is mostly about those; docs/RESULTS.md found that Δ LM loss follows
the FVU of the other dimensions instead. Each α trains the same architecture on the same cached
rows and is spliced in on the same held-out tokens:

    .venv/bin/python benchmarks/transcoder_target_scaling.py --cache /work/cache/l6-mlp \
        --alphas 0,0.5,1 --arch topk --tokens 299520 --out benchmarks/results-transcoder-scaling.jsonl
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

import saelab
from saelab.data import ActivationCache, load_corpus
from saelab.evals import evaluate_spliced
from saelab.evals.tokens import heldout_batches


def cached_rows(cache: ActivationCache, hooks: tuple[str, str], tokens: int) -> torch.Tensor:
    """The first `tokens` cached [x | y] rows, shard by shard (sha256-checked)."""
    parts, have = [], 0
    for index in range(len(cache.shards)):
        parts.append(torch.cat([cache.read_shard(index, hook).float() for hook in hooks], 1))
        have += len(parts[-1])
        if have >= tokens:
            break
    return torch.cat(parts)[:tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--alphas", default="0,0.5,1")
    parser.add_argument("--arch", default="topk")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--l0", type=int, default=32, help="k, or JumpReLU's target L0")
    parser.add_argument("--tokens", type=int, default=299_520)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cache = ActivationCache(args.cache)
    manifest = cache.config
    hook_in, hook_out = cache.hooks
    rows = cached_rows(cache, (hook_in, hook_out), args.tokens)
    d = rows.shape[1] // 2
    lm = saelab.load_model(manifest["model"], device="cpu")
    batches = list(
        heldout_batches(
            load_corpus(manifest["corpus"]), lm.tokenizer, args.eval_tokens,
            context_size=manifest["context_size"], batch_size=8,
        )
    )  # fmt: skip
    sparsity = {"k": args.l0} if args.arch != "jumprelu" else {"target_l0": args.l0}
    for alpha in (float(a) for a in args.alphas.split(",")):
        sae = saelab.create_sae(
            args.arch, d, args.width, d_out=d, seed=args.seed, model_name=manifest["model"],
            hook_name=hook_in, target_hook_name=hook_out, context_size=manifest["context_size"],
            **sparsity,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = saelab.TrainConfig(
                total_tokens=len(rows), seed=args.seed, target_scaling=alpha
            )
            saelab.train(sae, rows, config)
        metrics = evaluate_spliced(sae, lm, hook_out, batches)
        row = {"arch": args.arch, "alpha": alpha, "tokens": len(rows), "width": args.width}
        row |= {
            k: metrics[k]
            for k in ("l0", "fvu", "dead_fraction", "delta_lm_loss", "ce_loss_recovered", "kl")
        }
        print(json.dumps(row), flush=True)
        with args.out.open("a") as file:
            file.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
