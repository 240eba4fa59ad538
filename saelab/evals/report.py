"""eval.json (schema in docs/eval-schema.md) and its printed table."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from saelab.evals.spliced import MODEL_BEHAVIOR_KEYS

EVAL_TYPE_ID = "saelab_core"
SCHEMA_VERSION = 1
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "sparsity": ("l0", "l1", "dead_fraction", "dense_fraction"),
    "reconstruction": (
        "mse",
        "mse_per_element",
        "fvu",
        "explained_variance",
        "cosine",
        "shrinkage",
    ),
    "model_behavior": MODEL_BEHAVIOR_KEYS,
}


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: undefined metrics (e.g. FVU of constant data) become null."""
    value = float(value)
    return value if math.isfinite(value) else None


def grouped_metrics(flat: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """The flat metric dict of SplicedEvaluator.result() in eval.json's metric groups."""
    return {
        group: {key: _finite_or_none(flat[key]) for key in keys}
        for group, keys in METRIC_GROUPS.items()
    }


def build_report(
    *,
    metrics: dict[str, float],
    eval_config: dict[str, Any],
    sae: dict[str, Any],
    feature_density: dict[str, Any],
    files: dict[str, str],
    eval_time_s: float,
) -> dict[str, Any]:
    """The eval.json document (docs/eval-schema.md, schema_version 1)."""
    from saelab import __version__

    return {
        "eval_type_id": EVAL_TYPE_ID,
        "schema_version": SCHEMA_VERSION,
        "eval_config": eval_config,
        "saelab_version": __version__,
        "sae": sae,
        "metrics": grouped_metrics(metrics),
        "n_tokens": int(metrics["n_tokens"]),
        "n_predictions": int(metrics["n_predictions"]),
        "feature_density": feature_density,
        "files": files,
        "eval_time_s": round(eval_time_s, 3),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """Write eval.json (strict JSON: allow_nan=False)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


def _fmt(value: float | None) -> str:
    """A metric value for the table: 4 significant digits, '—' when undefined."""
    return "—" if value is None else f"{value:.4g}"


def report_table(report: dict[str, Any]) -> Table:
    """A rich table of every metric in eval.json, one row per metric, grouped."""
    config = report["eval_config"]
    table = Table(
        title=f"{report['sae']['architecture']} SAE (d_sae {report['sae']['d_sae']:,}) on "
        f"{config['model']} {config['hook']}",
        caption=f"{report['n_tokens']:,} held-out tokens of {config['corpus']}, "
        f"{report['n_predictions']:,} predictions, {report['eval_time_s']:.0f} s",
    )
    for column in ("group", "metric", "value"):
        table.add_column(column)
    groups = dict(report["metrics"])
    if "probing" in report:
        groups["probing (mean accuracy)"] = report["probing"]["tasks"].get("mean", {})
    if "absorption" in report:
        groups["absorption (mean over letters)"] = report["absorption"]["mean"]
    for group, values in groups.items():
        for index, (key, value) in enumerate(values.items()):
            table.add_row(group if index == 0 else "", key, _fmt(value))
    return table
