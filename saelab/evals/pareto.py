"""Pareto plots of a sweep (SPEC §4): L0 against delta LM loss or FVU, one curve per architecture."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from saelab.evals.sweep_table import setting_label

# metric key → (y-axis label, file stem under plots/)
PARETO_METRICS = {
    "delta_lm_loss": ("delta LM loss (CE with SAE − clean CE, nats)", "pareto_delta_lm_loss"),
    "fvu": ("fraction of variance unexplained (FVU)", "pareto_fvu"),
}


def _series(row: dict[str, Any], several_hooks: bool) -> str:
    """The curve a row belongs to: its architecture (and hook, when the sweep has several)."""
    return f"{row['arch']} @ {row['hook']}" if several_hooks else row["arch"]


def draw_pareto(axes: Axes, rows: list[dict[str, Any]], metric: str) -> Axes:
    """One curve per architecture of (L0, metric), points sorted by L0, log x, each labelled.

    Rows whose L0 is not positive (nothing to place on a log axis) or whose metric is
    undefined are left out.
    """
    ylabel = PARETO_METRICS[metric][0]
    several_hooks = len({row["hook"] for row in rows}) > 1
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["l0"] is not None and row["l0"] > 0 and row[metric] is not None:
            curves.setdefault(_series(row, several_hooks), []).append(row)
    for name, points in curves.items():
        points = sorted(points, key=lambda r: r["l0"])
        x = [p["l0"] for p in points]
        y = [p[metric] for p in points]
        (line,) = axes.plot(x, y, marker="o", label=name)
        for p in points:
            axes.annotate(
                setting_label(p), (p["l0"], p[metric]), textcoords="offset points",
                xytext=(4, 4), fontsize=7, color=line.get_color(),
            )  # fmt: skip
    axes.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 40, not 4×10^1
    l0s = [p["l0"] for points in curves.values() for p in points]
    narrow = bool(l0s) and max(l0s) / min(l0s) < 30  # label minor ticks only within ~1.5 decades
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain if narrow else NullFormatter())
    axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.margins(x=0.08, y=0.08)
    axes.set_xlabel("L0 (mean active latents per token, log scale)")
    axes.set_ylabel(ylabel)
    axes.grid(True, which="both", alpha=0.3)
    if curves:
        axes.legend(title="architecture")
    return axes


def save_pareto_plots(rows: list[dict[str, Any]], folder: Path, title: str) -> list[Path]:
    """plots/pareto_delta_lm_loss and plots/pareto_fvu, each as .png and .svg."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, (_, stem) in PARETO_METRICS.items():
        figure = Figure(figsize=(6.5, 4.5), dpi=130)  # no pyplot: no global state, no GUI backend
        axes = draw_pareto(figure.add_subplot(), rows, metric)
        axes.set_title(textwrap.fill(title, 90), fontsize=8)
        figure.tight_layout()
        for suffix in (".png", ".svg"):
            path = folder / f"{stem}{suffix}"
            figure.savefig(path)
            written.append(path)
    return written
