"""The sweep's results table: one row per SAE from its eval.json, as CSV, markdown and rich."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rich.table import Table

# (column, eval.json metric group, metric key, markdown/rich header)
METRIC_COLUMNS = (
    ("l0", "sparsity", "l0", "L0"),
    ("fvu", "reconstruction", "fvu", "FVU"),
    ("explained_variance", "reconstruction", "explained_variance", "expl. var."),
    ("delta_lm_loss", "model_behavior", "delta_lm_loss", "Δ LM loss"),
    ("ce_loss_recovered", "model_behavior", "ce_loss_recovered", "CE recovered"),
    ("kl", "model_behavior", "kl", "KL"),
    ("dead_fraction", "sparsity", "dead_fraction", "dead"),
)
CSV_COLUMNS = ("name", "hook", "arch", "sparsity", "k", *(c[0] for c in METRIC_COLUMNS), "n_tokens")


def sweep_row(
    name: str, hook: str, arch: str, sparsity: float | None, k: int | None, report: dict
) -> dict[str, Any]:
    """One table row: the member's identity and its eval.json metrics (None when undefined)."""
    metrics = report["metrics"]
    row: dict[str, Any] = {"name": name, "hook": hook, "arch": arch, "sparsity": sparsity, "k": k}
    for column, group, key, _ in METRIC_COLUMNS:
        row[column] = metrics[group][key]
    row["n_tokens"] = report["n_tokens"]
    return row


def setting_label(row: dict[str, Any]) -> str:
    """How the member's sparsity was set: 'k=32', 'λ=0.001' or 'default'."""
    if row["k"] is not None:
        return f"k={row['k']}"
    return f"λ={row['sparsity']:g}" if row["sparsity"] is not None else "default"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """sweep.csv: full-precision values (repr of the floats in eval.json), empty when undefined."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a sweep.csv as strings (for tools and tests)."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _fmt(value: float | None) -> str:
    """4 significant digits, '—' when undefined."""
    return "—" if value is None else f"{value:.4g}"


def _cells(row: dict[str, Any], with_hook: bool) -> list[str]:
    hook = [row["hook"]] if with_hook else []
    metrics = [_fmt(row[column]) for column, *_ in METRIC_COLUMNS]
    return [row["name"], *hook, row["arch"], setting_label(row), *metrics]


def _headers(with_hook: bool) -> list[str]:
    return [
        "name",
        *(["hook"] if with_hook else []),
        "arch",
        "λ / k",
        *(c[3] for c in METRIC_COLUMNS),
    ]


def write_markdown(path: Path, rows: list[dict[str, Any]], title: str) -> Path:
    """sweep.md: a markdown table of every member (4 significant digits)."""
    with_hook = len({row["hook"] for row in rows}) > 1
    headers = _headers(with_hook)
    lines = [f"# {title}", "", "| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(_cells(row, with_hook)) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def rich_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The same table for the terminal."""
    with_hook = len({row["hook"] for row in rows}) > 1
    table = Table(title=title)
    for header in _headers(with_hook):
        table.add_column(header, justify="left" if header in ("name", "hook", "arch") else "right")
    for row in rows:
        table.add_row(*_cells(row, with_hook))
    return table
