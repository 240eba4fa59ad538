"""FeatureAccumulator: everything `saelab analyze` learns about each latent, in one bounded pass.

update() takes one batch of contexts (token ids and SAE activations f). State per latent:
firing count, activation sum and max, a growing histogram, a top-k example buffer and a uniform
reservoir of firing events (both with context windows); globally: the L0-per-token counts, a
log-magnitude histogram and the activations of the first few tokens (for the overview figure).
Memory depends on d_sae, k, reservoir size and window, never on the number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.analysis.buffers import ExampleBuffer
from saelab.analysis.histograms import LatentHistograms

MAGNITUDE_RANGE = (-4.0, 4.0)  # log10 range of the global non-zero magnitude histogram
MAGNITUDE_BINS = 80


@dataclass(frozen=True)
class AnalysisConfig:
    """Sizes of the per-latent buffers (all bounded; see the module docstring)."""

    top_k: int = 20
    reservoir: int = 40
    quantiles: int = 4
    per_quantile: int = 5
    window: int = 12
    histogram_bins: int = 32
    sample_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_k", "reservoir", "quantiles", "per_quantile", "sample_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"analysis {name} must be ≥ 1, got {getattr(self, name)}.")
        if self.window < 0:
            raise ValueError(f"analysis window must be ≥ 0, got {self.window}.")


class FeatureAccumulator:
    """Streaming per-latent statistics and examples (see the module docstring)."""

    def __init__(self, d_sae: int, config: AnalysisConfig, device: torch.device) -> None:
        self.d_sae, self.config, self.device = d_sae, config, device
        self.n_tokens = 0
        self.n_contexts = 0
        self.n_fired = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.sum_act = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.max_act = torch.zeros(d_sae, device=device)
        self.histograms = LatentHistograms(d_sae, config.histogram_bins, device)
        self.top = ExampleBuffer.empty(d_sae, config.top_k, config.window, device)
        self.reservoir = ExampleBuffer.empty(d_sae, config.reservoir, config.window, device)
        self.l0_counts = torch.zeros(d_sae + 1, dtype=torch.int64, device=device)
        self.magnitudes = torch.zeros(MAGNITUDE_BINS, dtype=torch.int64, device=device)
        self.sample_acts = torch.zeros(0, d_sae)
        self.sample_ids: list[int] = []
        self._generator = torch.Generator(device=device).manual_seed(config.seed)

    def nbytes(self) -> int:
        """Memory of the whole state (constant over the stream)."""
        tensors = (self.n_fired, self.sum_act, self.max_act, self.l0_counts, self.magnitudes)
        per_latent = sum(t.numel() * t.element_size() for t in tensors)
        sample = self.config.sample_tokens * self.d_sae * 4
        return (
            per_latent
            + sample
            + self.histograms.nbytes()
            + self.top.nbytes()
            + self.reservoir.nbytes()
        )

    @torch.no_grad()
    def update(self, input_ids: Tensor, f: Tensor, mask: Tensor) -> int:
        """Add one batch: ids (batch, seq), f (batch, seq, d_sae), mask (batch, seq) of SAE
        positions (BOS/EOS/pad excluded). Returns the number of SAE positions added.

        Works on the firing events (the non-zeros at SAE positions): a few per cent of f.
        """
        batch, seq, n = f.shape
        fired = (f > 0) & mask[..., None]
        token, latent = fired.view(batch * seq, n).nonzero(as_tuple=True)
        values = f.view(batch * seq, n)[token, latent].float()
        self.n_fired += torch.bincount(latent, minlength=n)
        self.sum_act += torch.bincount(latent, weights=values.double(), minlength=n)
        self.max_act.scatter_reduce_(0, latent, values, "amax")
        self.histograms.update(latent, values)
        l0 = torch.bincount(token, minlength=batch * seq)[mask.view(-1)]
        self.l0_counts += torch.bincount(l0, minlength=n + 1)
        self._add_magnitudes(values)
        self._keep_sample(input_ids, f, mask)
        self.top.merge(latent, token, values, f, input_ids, mask, self.n_contexts)
        keys = torch.rand(len(values), generator=self._generator, device=f.device)
        self.reservoir.merge(latent, token, keys, f, input_ids, mask, self.n_contexts)
        self.n_contexts += batch
        added = int(mask.sum())
        self.n_tokens += added
        return added

    def _add_magnitudes(self, values: Tensor) -> None:
        """Histogram of log10 of every non-zero activation (global, fixed bins)."""
        low, high = MAGNITUDE_RANGE
        index = ((values.log10() - low) / (high - low) * MAGNITUDE_BINS).long()
        self.magnitudes += torch.bincount(
            index.clamp(0, MAGNITUDE_BINS - 1), minlength=MAGNITUDE_BINS
        )

    def _keep_sample(self, input_ids: Tensor, f: Tensor, mask: Tensor) -> None:
        """Keep the first `sample_tokens` SAE positions' activations (overview heatmap)."""
        room = self.config.sample_tokens - len(self.sample_ids)
        if room > 0:
            self.sample_ids += input_ids[mask][:room].tolist()
            self.sample_acts = torch.cat((self.sample_acts, f[mask][:room].float().cpu()))

    def frequency(self) -> Tensor:
        """Fraction of SAE positions on which each latent fired."""
        return self.n_fired.double() / max(self.n_tokens, 1)

    def mean_activation(self) -> Tensor:
        """Mean activation over the positions where each latent fired (0 for dead latents)."""
        return self.sum_act / self.n_fired.clamp(min=1)
