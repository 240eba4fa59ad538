"""Matplotlib figures of an analysed SAE: the four-panel overview and per-latent histograms.

Overview panels: (a) activations of the most frequent latents over the first sample tokens
(heatmap); (b) distribution of latent firing frequencies (log10, dead latents counted apart);
(c) L0 per token; (d) magnitudes of all non-zero activations (log10). All from features.sqlite.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from saelab.analysis.database import FeatureDB

OVERVIEW_FILE = "features_overview.png"


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (safe in servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def plot_overview(db: FeatureDB, path: Path) -> Path:
    """Write the four-panel overview PNG of the SAE analysed in db."""
    plt = _pyplot()
    meta = db.meta()
    data = meta["overview"]
    freq = np.array([row["frequency"] for row in db.latents()])
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=110)
    try:
        _heatmap(axes[0, 0], data)
        _frequency(axes[0, 1], freq, meta["tokens"])
        l0 = np.array(data["l0_counts"])
        axes[1, 0].bar(np.arange(len(l0)), l0, width=1.0, color="tab:green")
        mean_l0 = float((np.arange(len(l0)) * l0).sum() / max(l0.sum(), 1))
        axes[1, 0].set(
            title=f"L0 per token (mean {mean_l0:.1f})", xlabel="active latents", ylabel="tokens"
        )
        axes[1, 1].stairs(data["magnitude_counts"], data["magnitude_log10_edges"], fill=True)
        axes[1, 1].set(
            title="Non-zero activation magnitudes", xlabel="log10 activation", ylabel="count"
        )
        figure.suptitle(
            f"{meta['architecture']} d_sae={meta['d_sae']} · {meta['model']} {meta['hook']} · "
            f"{meta['tokens']:,} tokens"
        )
        return _save(figure, path)
    finally:
        plt.close(figure)


def _heatmap(axes, data: dict) -> None:
    """Activations of the most frequent latents (rows) over the first sample tokens (columns)."""
    acts = np.array(data["sample_acts"])
    if acts.size == 0:
        axes.set_title("Activation heatmap (no tokens)")
        return
    image = axes.imshow(acts, aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_yticks(
        range(len(data["sample_latents"])), [str(i) for i in data["sample_latents"]], fontsize=5
    )
    tokens = [t.replace("\n", "⏎") for t in data["sample_tokens"]]
    axes.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=5)
    axes.set(title="Most frequent latents over sample tokens", ylabel="latent")
    axes.figure.colorbar(image, ax=axes, fraction=0.03)


def _frequency(axes, freq: np.ndarray, n_tokens: int) -> None:
    """Histogram of log10 firing frequency of live latents; dead ones in the title."""
    live = freq[freq > 0]
    low = math.floor(math.log10(1 / max(n_tokens, 1)))
    axes.hist(
        np.log10(live) if len(live) else [],
        bins=np.linspace(low, 0, 5 * -low + 1),
        color="tab:blue",
    )
    axes.set(
        title=f"Firing frequency ({len(freq) - len(live)} of {len(freq)} latents never fired)",
        xlabel="log10 firing frequency",
        ylabel="latents",
    )


def plot_latent_histogram(db: FeatureDB, latent: int, path: Path) -> Path:
    """Write one latent's activation histogram (non-zero activations) as a PNG."""
    row = db.latent(latent)
    if row is None:
        raise ValueError(f"{db.path}: no latent {latent} (valid: 0..{db.count() - 1}).")
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5, 3), dpi=110)
    try:
        histogram = row["histogram"]
        if histogram["counts"]:
            axes.stairs(histogram["counts"], histogram["edges"], fill=True, color="tab:orange")
        axes.set(
            title=f"latent {latent}: frequency {row['frequency']:.2e}, max {row['max_activation']:.3g}",
            xlabel="activation",
            ylabel="tokens",
        )
        return _save(figure, path)
    finally:
        plt.close(figure)


def _save(figure, path: Path) -> Path:
    """Lay out and write a figure, creating its folder."""
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
