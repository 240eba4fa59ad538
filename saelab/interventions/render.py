"""Readable rich tables for the steering, prompt-analysis and contrast results."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from saelab.analysis.dense import DenseLatents
from saelab.interventions.steering import SteeringResult


def steering_table(result: SteeringResult) -> Table:
    """Baseline and steered continuations side by side."""
    edits = ", ".join(
        f"{i}" if result.mode == "ablate" else f"{i}={v:g}" for i, v in result.latents.items()
    )
    where = "" if result.from_position is None else f", from position {result.from_position}"
    table = Table(title=f"Prompt: {result.prompt!r}", show_lines=True)
    table.add_column("baseline", ratio=1)
    table.add_column(f"{result.mode} latent {edits}{where}", ratio=1)
    table.add_row(Text(result.baseline), Text(result.steered))
    return table


def dense_line(report: dict[str, Any]) -> Text:
    """The report's dense latents (left out or kept) on a line of their own."""
    return Text(DenseLatents(**report["dense"]).line(), style="dim")


def prompt_table(report: dict[str, Any]) -> Group:
    """One row per token: its top latents with activations and explanations; the dense
    latents on a line of their own below."""
    table = Table(title=f"Top latents per token · {report['model']} {report['hook']}")
    table.add_column("pos", justify="right")
    table.add_column("token")
    table.add_column("latents (activation)")
    for row in report["tokens"]:
        explanations = row["explanations"]
        cells = [
            f"{i} ({a:.3g})" + (f" {explanations[i]}" if i in explanations else "")
            for i, a in row["latents"]
        ]
        table.add_row(str(row["position"]), Text(repr(row["token"])), Text("\n".join(cells)))
    return Group(table, dense_line(report))


def _example(sign: str, example: dict[str, Any]) -> str:
    """One example line: sign, activation, snippet on one line."""
    text = example["text"].replace("\n", "⏎")
    return f"{sign} {example['activation']:.3g}  {text}"


def contrast_table(report: dict[str, Any]) -> Group:
    """Ranked latents with their statistics and top example from each corpus; the dense
    latents on a line of their own below."""
    pos, neg = report["positive"], report["negative"]
    table = Table(
        title=f"Latents specific to {pos['corpus']} ({pos['documents']} docs) vs "
        f"{neg['corpus']} ({neg['documents']} docs)",
        show_lines=True,
    )
    for name in ("latent", "AUROC", "p (q)", "freq +/−", "mean +/−", "ratio"):
        table.add_column(name, justify="right")
    table.add_column("top examples (+ / −)")
    for row in report["latents"]:
        ratio = "∞" if row["ratio"] is None else f"{row['ratio']:.3g}"
        lines = [_example("+", e) for e in row["examples"]["positive"]]
        lines += [_example("−", e) for e in row["examples"]["negative"]]
        if row["explanation"]:
            lines.insert(0, row["explanation"])
        table.add_row(
            str(row["latent"]),
            f"{row['auroc']:.3f}",
            f"{row['p_value']:.2g} ({row['q_value']:.2g})",
            f"{row['freq_pos']:.2f}/{row['freq_neg']:.2f}",
            f"{row['mean_pos']:.3g}/{row['mean_neg']:.3g}",
            ratio,
            Text("\n".join(lines)),
        )
    return Group(table, dense_line(report))
