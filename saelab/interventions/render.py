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


def _node(report: dict[str, Any], row: dict[str, Any]) -> str:
    """A node as text: site hook, position, latent (or error) and its explanation."""
    hook = report["sites"][row["site"]]["write"]
    what = "error" if row["latent"] is None else f"latent {row['latent']}"
    text = f"{hook} @{row['position']} {row['token']!r} {what}"
    return text + (f" — {row['explanation']}" if row.get("explanation") else "")


def attribution_tables(report: dict[str, Any]) -> Group:
    """Per position the top latents and each SAE's error node, then the edges and the ablation
    check when present (saelab attribute)."""
    metric = report["metric"]
    name = f"log p({metric['target']!r})"
    if metric["kind"] == "logit-diff":
        name = f"logit({metric['target']!r}) − logit({metric['contrast']!r})"
    table = Table(
        title=f"Attribution to {name} = {metric['value']:.4g} · {report['model']}",
        caption="attribution = f·∂m/∂f (a latent) or e·∂m/∂e (the error node); removing the "
        "node changes m by about −attribution",
    )
    table.add_column("pos", justify="right")
    table.add_column("token")
    table.add_column("top latents: attribution (activation)")
    for site in report["sites"]:
        table.add_column(f"error {site['write']}", justify="right")
    for row in report["positions"]:
        cells = [
            f"{report['sites'][n['site']]['write']} {n['latent']}: {n['attribution']:+.3g} "
            f"({n['activation']:.3g})" + (f" {n['explanation']}" if n.get("explanation") else "")
            for n in row["latents"]
        ]
        errors = [f"{e:+.3g}" for e in row["errors"]]
        table.add_row(str(row["position"]), Text(repr(row["token"])), Text("\n".join(cells)),
                      *errors)  # fmt: skip
    parts: list[Any] = [table]
    if report["edges"]:
        edges = Table(title=f"Top {len(report['edges'])} edges (upstream → downstream)")
        for column in ("weight", "from", "to"):
            edges.add_column(column)
        for edge in report["edges"]:
            edges.add_row(
                f"{edge['weight']:+.3g}",
                Text(_node(report, edge["from"])),
                Text(_node(report, edge["to"])),
            )
        parts.append(edges)
    if "check" in report:
        check = Table(title="Zero-ablation check: estimated vs measured change of the metric")
        for column in ("node", "estimate", "measured"):
            check.add_column(column)
        for row in report["check"]["rows"]:
            node = {**row, "token": report["positions"][row["position"]]["token"]}
            check.add_row(Text(_node(report, node)), f"{row['estimate']:+.4g}",
                          f"{row['measured']:+.4g}")  # fmt: skip
        parts.append(check)
        rho = report["check"]["correlation"]
        parts.append(Text(f"correlation over {len(report['check']['rows'])} latents: "
                          + ("undefined" if rho is None else f"{rho:.3f}")))  # fmt: skip
    return Group(*parts)
