"""A small synthetic features.sqlite for autointerp tests, built through FeatureDB's writers.

Synthetic latent i (of N_LATENTS − 1 live ones; the last latent never fired) has six top
examples whose only activating token is " w{i}" and four quantile examples whose only
activating token is " z{i}"; all other tokens are filler words shared by every latent.
"""

from __future__ import annotations

import random
from pathlib import Path

from saelab.analysis.database import FeatureDB

N_LATENTS = 7
N_TOP, N_QUANTILE = 6, 4
FILLERS = ["the", "of", "and", "to", "in", "is", "it", "for", "on", "as", "with", "at"]


def _example(
    latent: int, kind: str, rank: int, word: str, value: float, rng: random.Random
) -> dict:
    """One example window: 5 fillers, the activating word, 5 fillers."""
    tokens = [f" {rng.choice(FILLERS)}" for _ in range(5)] + [f" {word}"]
    tokens += [f" {rng.choice(FILLERS)}" for _ in range(5)]
    activations = [0.0] * 5 + [value] + [0.0] * 5
    quantile = None if kind == "top" else N_QUANTILE - 1 - rank
    return {
        "latent": latent, "kind": kind, "rank": rank if kind == "top" else 0,
        "quantile": quantile, "max_activation": value, "tokens": tokens,
        "activations": activations, "max_index": 5,
    }  # fmt: skip


def build_features_db(path: Path) -> Path:
    """A features.sqlite with the synthetic latents described in the module docstring."""
    rng = random.Random(0)
    db = FeatureDB.create(path)
    db.write_meta({"model": "synthetic", "d_sae": N_LATENTS})
    rows, examples = [], []
    for i in range(N_LATENTS):
        live = i < N_LATENTS - 1
        rows.append({
            "latent": i, "frequency": (i + 1) / 100 if live else 0.0, "mean_activation": 1.0,
            "max_activation": 10.0 if live else 0.0, "n_fired": 10 * (i + 1) if live else 0,
            "top_tokens": f"w{i}" if live else "",
        })  # fmt: skip
        if live:
            examples += [_example(i, "top", r, f"w{i}", 10.0 - r, rng) for r in range(N_TOP)]
            examples += [
                _example(i, "quantile", q, f"z{i}", 1.0 + q, rng) for q in range(N_QUANTILE)
            ]
    db.write_latents(rows)
    db.write_examples(examples)
    db.close()
    return path
