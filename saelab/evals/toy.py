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
    Optionally shaped like a real residual stream (SPEC §2.0: gemma-3-270m layer 6): a mean
    holding `mean_fraction` of E‖x‖², and `heavy` dense Gaussian dimensions holding
    `heavy_variance` of the variance.
    """

    d: int = 64
    m: int = 256
    active: float = 5.0
    seed: int = 0
    mean_fraction: float = 0.0
    heavy: int = 0
    heavy_variance: float = 0.0

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        features = torch.randn(self.m, self.d, generator=g)
        self.features = features / features.norm(dim=1, keepdim=True)
        self._generator = g
        self.offset = torch.zeros(self.d)
        self.heavy_std = 0.0
        if self.mean_fraction or self.heavy:
            self._shape_like_residual_stream(g)

    def _shape_like_residual_stream(self, g: torch.Generator) -> None:
        """Pick the heavy dimensions' std and the offset from a sample of the sparse part."""
        sparse = self._sparse(100_000)
        variance = float((sparse - sparse.mean(0)).pow(2).sum(-1).mean())
        if self.heavy:
            heavy_total = variance * self.heavy_variance / (1 - self.heavy_variance)
            self.heavy_std = (heavy_total / self.heavy) ** 0.5
            variance += heavy_total
        direction = torch.randn(self.d, generator=g)
        radius = (variance * self.mean_fraction / (1 - self.mean_fraction)) ** 0.5
        self.offset = radius * direction / direction.norm() - sparse.mean(0)

    def _sparse(self, n: int) -> Tensor:
        g = self._generator
        on = torch.rand(n, self.m, generator=g) < self.active / self.m
        coeff = 0.5 + torch.rand(n, self.m, generator=g)
        return (on * coeff) @ self.features

    def sample(self, n: int) -> Tensor:
        """n activation vectors (n, d)."""
        x = self._sparse(n)
        if self.heavy:
            noise = torch.randn(n, self.heavy, generator=self._generator) * self.heavy_std
            x[:, : self.heavy] += noise
        return x + self.offset if self.mean_fraction else x


def mmcs(true_features: Tensor, decoder: Tensor) -> float:
    """Mean over true features of the max cosine similarity with any learned decoder row."""
    t = true_features / true_features.norm(dim=1, keepdim=True)
    w = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((t.to(w.dtype) @ w.T).max(dim=1).values.mean())
