"""Toy-model ground truth (SPEC §3): superposition data from a known dictionary, and MMCS."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SyntheticDictionary:
    """m unit-norm true features in d dims; each token activates ~`active` of them.

    Coefficients are Uniform(0.5, 1.5)·scale on active features (Bernoulli(active/m) each),
    so the data is a sparse non-negative mix of known directions, like SAE training data.
    """

    d: int = 64
    m: int = 256
    active: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        features = torch.randn(self.m, self.d, generator=g)
        self.features = features / features.norm(dim=1, keepdim=True)
        self._generator = g

    def sample(self, n: int) -> Tensor:
        """n activation vectors (n, d)."""
        g = self._generator
        on = torch.rand(n, self.m, generator=g) < self.active / self.m
        coeff = 0.5 + torch.rand(n, self.m, generator=g)
        return (on * coeff) @ self.features


def mmcs(true_features: Tensor, decoder: Tensor) -> float:
    """Mean over true features of the max cosine similarity with any learned decoder row."""
    t = true_features / true_features.norm(dim=1, keepdim=True)
    w = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((t.to(w.dtype) @ w.T).max(dim=1).values.mean())
