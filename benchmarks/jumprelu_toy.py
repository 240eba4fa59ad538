"""Which JumpReLU settings recover a known dictionary fast (docs/jumprelu-training.md).

Trains one JumpReLU SAE per variant on the toy superposition data of the recovery test
(256 features in 64 dims, width 512, 1M tokens, batch 1024, LR 3e-3, λ = 0.05) and prints
MMCS, L0, FVU and dead fraction. Run: .venv/bin/python benchmarks/jumprelu_toy.py
"""

from __future__ import annotations

import time

import torch

import saelab
from saelab.evals.toy import SyntheticDictionary, mmcs
from saelab.train import normalization_constant

BASE = {"total_tokens": 1_000_000, "batch_size": 1024, "lr": 3e-3, "sparsity_coefficient": 0.05}
VARIANTS = {
    "θ init 0.3 (≈ per-latent 99th pct of π)": ({"init_threshold": 0.3}, {}),
    "θ init 0.2 (≈ 95th pct of π)": ({"init_threshold": 0.2}, {}),
    "paper init, no LR decay (default)": ({}, {}),
    "paper init + LR decay over the last 20%": ({}, {"lr_decay_fraction": 0.2}),
    "paper init + pre-act loss λ_P = 0.1": ({"pre_act_coefficient": 0.1}, {}),
    "paper init, ε = 0.05": ({"bandwidth": 0.05}, {}),
}


def main() -> None:
    torch.set_num_threads(2)
    toy = SyntheticDictionary(d=64, m=256, active=5.0, seed=0)
    train_x, eval_x = toy.sample(300_000), toy.sample(20_000)
    print(f"normalisation constant C = {normalization_constant(train_x):.3f}")
    print("| variant | MMCS | L0 | FVU | dead | seconds |")
    print("|---|---|---|---|---|---|")
    for name, (options, overrides) in VARIANTS.items():
        sae = saelab.create_sae("jumprelu", 64, 512, seed=0, **options)
        start = time.perf_counter()
        saelab.train(sae, train_x, saelab.TrainConfig(**(BASE | overrides)))
        seconds = time.perf_counter() - start
        m = saelab.evaluate(sae, eval_x)
        score = mmcs(toy.features, sae.W_dec.detach())
        print(
            f"| {name} | {score:.3f} | {m['l0']:.1f} | {m['fvu']:.3f} | "
            f"{m['dead_fraction']:.0%} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
