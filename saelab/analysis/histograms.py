"""Streaming per-latent activation histograms with exact, growing ranges.

Each latent's histogram has `bins` equal bins over [0, top], where top is a power of two that
doubles (merging adjacent bins pairwise, which is exact) whenever a larger activation arrives.
So the final histogram spans at most twice the latent's max activation, without a second pass.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LatentHistograms:
    """Counts of the non-zero activations of every latent, `bins` (a power of two) bins each."""

    def __init__(self, d_sae: int, bins: int, device: torch.device) -> None:
        if bins < 2 or bins & (bins - 1):
            raise ValueError(f"histogram bins must be a power of two ≥ 2, got {bins}.")
        self.bins = bins
        self.counts = torch.zeros(d_sae, bins, dtype=torch.int64, device=device)
        self.top = torch.zeros(d_sae, device=device)  # 0: no activation seen yet

    def nbytes(self) -> int:
        return self.counts.numel() * 8 + self.top.numel() * 4

    def update(self, latents: Tensor, values: Tensor) -> None:
        """Add events: latent index and (positive) activation value, 1-D tensors of equal length."""
        if values.numel() == 0:
            return
        batch_max = torch.zeros_like(self.top).scatter_reduce(0, latents, values, "amax")
        self._grow(batch_max)
        top = self.top[latents]
        index = (values / top * self.bins).long().clamp_(0, self.bins - 1)
        self.counts.view(-1).index_add_(
            0, latents * self.bins + index, torch.ones_like(index, dtype=torch.int64)
        )

    def _grow(self, batch_max: Tensor) -> None:
        """Raise `top` (by powers of two) to cover batch_max, merging bins to match."""
        fresh = (self.top == 0) & (batch_max > 0)
        self.top[fresh] = torch.exp2(torch.ceil(torch.log2(batch_max[fresh])))
        over = batch_max > self.top
        if not over.any():
            return
        steps = torch.ceil(torch.log2(batch_max[over] / self.top[over])).long().clamp_(min=1)
        index = over.nonzero().squeeze(1)
        for step in steps.unique().tolist():
            rows = index[steps == step]
            factor = 2**step
            counts = self.counts[rows]
            if factor >= self.bins:
                merged = torch.zeros_like(counts)
                merged[:, 0] = counts.sum(1)
            else:
                merged = torch.zeros_like(counts)
                merged[:, : self.bins // factor] = counts.view(len(rows), -1, factor).sum(2)
            self.counts[rows] = merged
            self.top[rows] *= factor

    def edges(self, latent: int) -> list[float]:
        """Bin edges of one latent ([] when it never fired)."""
        top = float(self.top[latent])
        return [top * i / self.bins for i in range(self.bins + 1)] if top > 0 else []
