"""`saelab demo`: train JumpReLU and TopK SAEs on superposition data with a known dictionary.

The data are sparse non-negative mixes of 256 known unit directions in 64 dims (SPEC §3
"Toy-model ground truth"), so each SAE's dictionary recovery (MMCS) can be measured.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from saelab.evals.metrics import evaluate
from saelab.evals.toy import SyntheticDictionary, mmcs
from saelab.sae import create_sae
from saelab.train import TrainConfig, train

# Settings for this toy problem (documented in docs/jumprelu-training.md).
DEMO_SAES = {
    "jumprelu": ({"bandwidth": 0.05}, 0.05),
    "topk": ({"k": 5}, 0.0),
}
DEMO_CONFIG = {"total_tokens": 1_500_000, "batch_size": 1024, "lr": 3e-3}


def run_demo(out: str | Path = "demo_out", seed: int = 0) -> dict[str, dict[str, float]]:
    """Train the demo SAEs in lockstep, print L0 / FVU / MMCS, save them under `out`."""
    console = Console(stderr=True)
    toy = SyntheticDictionary(d=64, m=256, active=5.0, seed=seed)
    train_x, eval_x = toy.sample(300_000), toy.sample(20_000)
    console.print(
        f"[bold]saelab demo[/]: {toy.m} true features in {toy.d} dims, ~{toy.active:g} active "
        f"per token; training {', '.join(DEMO_SAES)} SAEs (width {2 * toy.m}) on "
        f"{DEMO_CONFIG['total_tokens']:,} tokens in lockstep"
    )
    saes = [
        create_sae(arch, toy.d, 2 * toy.m, seed=seed, **opts)
        for arch, (opts, _) in DEMO_SAES.items()
    ]
    start = time.perf_counter()
    configs = [
        TrainConfig(**DEMO_CONFIG, sparsity_coefficient=lam, seed=seed, progress=True)
        for _, lam in DEMO_SAES.values()
    ]
    train(saes, train_x, configs)
    elapsed = time.perf_counter() - start
    table = Table(
        title=f"Dictionary recovery after {elapsed:.0f} s (held-out tokens: {len(eval_x):,})"
    )
    for col in ("SAE", "L0", "FVU", "explained var.", "dead", "MMCS", "saved to"):
        table.add_column(col)
    results = {}
    out = Path(out)
    for arch, sae in zip(DEMO_SAES, saes, strict=True):
        m = evaluate(sae, eval_x)
        m["mmcs"] = mmcs(toy.features, sae.W_dec.detach())
        path = sae.save(out / arch)
        results[arch] = m
        table.add_row(
            arch,
            f"{m['l0']:.2f}",
            f"{m['fvu']:.3f}",
            f"{m['explained_variance']:.3f}",
            f"{m['dead_fraction']:.0%}",
            f"{m['mmcs']:.3f}",
            str(path),
        )
    Console().print(table)
    torch.save(toy.features, out / "true_features.pt")
    return results
