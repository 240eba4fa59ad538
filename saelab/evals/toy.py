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


@dataclass
class HierarchicalDictionary:
    """Parents that never fire alone: each token activates parent p with probability
    `parent_rate`, and then exactly one of its `children` (chosen uniformly) with it.

    x = Σ_active p (a_p·d_p + b_c·d_c), coefficients Uniform(0.5, 1.5), all directions random
    unit vectors in d dims. A parent always co-occurs with a child, so an SAE can fold d_p into
    every child latent and drop the parent latent (feature absorption, Chanin et al. 2024).
    """

    d: int = 64
    parents: int = 8
    children: int = 8
    parent_rate: float = 0.15
    # True: a child's coefficient equals its parent's (the pair is one direction to an SAE).
    tied: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        parents = torch.randn(self.parents, self.d, generator=g)
        self.parent_features = parents / parents.norm(dim=1, keepdim=True)
        # A parent's children vary around it: orthogonal to it and centred on one another, so
        # the best single direction for "parent and any one child" is the parent itself.
        kids = torch.randn(self.parents, self.children, self.d, generator=g)
        p = self.parent_features[:, None, :]
        kids = kids - (kids * p).sum(-1, keepdim=True) * p
        kids = kids - kids.mean(1, keepdim=True)
        # child c of parent p is row p·children + c
        self.child_features = (kids / kids.norm(dim=-1, keepdim=True)).reshape(-1, self.d)
        self._generator = g

    def sample(self, n: int) -> Tensor:
        """n activation vectors (n, d)."""
        g = self._generator
        on = torch.rand(n, self.parents, generator=g) < self.parent_rate
        child = torch.randint(0, self.children, (n, self.parents), generator=g)
        a = on * (0.5 + torch.rand(n, self.parents, generator=g))
        b = a if self.tied else on * (0.5 + torch.rand(n, self.parents, generator=g))
        child_rows = torch.arange(self.parents) * self.children + child  # (n, parents)
        return a @ self.parent_features + torch.einsum(
            "np,npd->nd", b, self.child_features[child_rows]
        )


def mmcs(true_features: Tensor, decoder: Tensor) -> float:
    """Mean over true features of the max cosine similarity with any learned decoder row."""
    t = true_features / true_features.norm(dim=1, keepdim=True)
    w = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((t.to(w.dtype) @ w.T).max(dim=1).values.mean())
