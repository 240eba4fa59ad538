"""Per-latent statistics and the feature-density histogram (SPEC §3), saved beside eval.json."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from saelab.files import save_safetensors

LATENT_STATS_FILE = "latent_stats.safetensors"
DENSITY_PLOT_FILE = "feature_density.png"
BINS_PER_DECADE = 5


def density_histogram(firing_frequency: Tensor, n_tokens: int) -> dict:
    """Counts of log10(firing frequency) of the live latents, plus the number of dead ones.

    Bins are 1/BINS_PER_DECADE of a decade wide, from the lowest possible frequency (one token
    in n_tokens) up to 10^0 = fires on every token; dead latents (frequency 0) have no log and
    are counted in "dead".
    """
    freq = firing_frequency.double().cpu()
    live = freq[freq > 0]
    lowest = math.log10(1 / max(n_tokens, 1))
    low = min(math.floor(lowest * BINS_PER_DECADE) / BINS_PER_DECADE, -1.0)
    n_bins = round(-low * BINS_PER_DECADE)
    edges = torch.linspace(low, 0.0, n_bins + 1, dtype=torch.float64)
    counts = torch.histogram(live.log10(), bins=edges).hist if len(live) else torch.zeros(n_bins)
    return {
        "log10_bin_edges": [round(float(e), 6) for e in edges],
        "counts": [int(c) for c in counts],
        "dead": int((freq == 0).sum()),
    }


def save_latent_stats(
    path: Path, firing_frequency: Tensor, mean_activation: Tensor, n_tokens: int
) -> Path:
    """Write firing_frequency and mean_activation (float64, (d_sae,)) as safetensors."""
    tensors = {
        "firing_frequency": firing_frequency.double().cpu().contiguous(),
        "mean_activation": mean_activation.double().cpu().contiguous(),
    }
    return save_safetensors(tensors, path, metadata={"n_tokens": str(n_tokens)})


def plot_density(path: Path, histogram: dict, title: str) -> Path:
    """Bar chart of the feature-density histogram (x: log10 firing frequency) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    edges, counts = histogram["log10_bin_edges"], histogram["counts"]
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=120)
    try:
        axes.stairs(counts, edges, fill=True)
        axes.set_xlabel("log10 firing frequency")
        axes.set_ylabel("latents")
        axes.set_title(title, fontsize=9)
        label = f"dead: {histogram['dead']}"
        axes.text(0.98, 0.95, label, transform=axes.transAxes, ha="right", va="top")
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
