"""`saelab explain`: LLM explanations + detection/fuzzing scores for latents of features.sqlite."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from saelab import cli_common as c
from saelab.autointerp.selection import SPEC_HELP


def _table(summary: dict[str, Any]) -> object:
    """Rich table of the per-latent results."""
    from rich.table import Table

    table = Table("latent", "status", "detection", "fuzzing", "explanation")

    def score(value: float | None) -> str:
        return "" if value is None else f"{value:.3f}"

    for row in summary["results"]:
        status = row["status"] + (" (kept)" if row["skipped"] else "")
        table.add_row(
            str(row["latent"]), status, score(row["detection"]), score(row["fuzzing"]),
            row["explanation"] or "; ".join(row["errors"]),
        )  # fmt: skip
    return table


def _totals(summary: dict[str, Any]) -> str:
    """One line: counts, mean scores, tokens and cost."""
    usage = summary["usage"]
    means = ", ".join(
        f"mean {name} {summary[f'mean_{name}']:.3f}"
        for name in ("detection", "fuzzing")
        if summary[f"mean_{name}"] is not None
    )
    cost = f", est. cost {usage['cost']:.4f}" if usage["cost"] is not None else ""
    return (
        f"{summary['finished']} of {summary['requested']} latents: {summary['done']} done, "
        f"{summary['unparsed']} unparsed, {summary['error']} with errors, "
        f"{summary['no_examples']} without examples, {summary['skipped']} already explained. "
        f"{means}\n{usage['requests']} requests, {usage['prompt_tokens']:,} prompt + "
        f"{usage['completion_tokens']:,} completion tokens, {usage['retries']} retries{cost}."
    )


def explain_command(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run directory with features.sqlite (from `saelab analyze`), or the file."
        ),
    ],
    latents: Annotated[str, typer.Option(help=SPEC_HELP)],
    llm_model: Annotated[
        str,
        typer.Option(
            help="LLM: the model name sent to the endpoint (openai), or a model alias/dir/hub id "
            "loaded with transformers (transformers)."
        ),
    ],
    base_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible API base URL, e.g. https://api.openai.com/v1 or "
            "http://127.0.0.1:8000/v1 (requests go to BASE_URL/chat/completions)."
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="openai (any OpenAI-compatible endpoint) or transformers (local).")
    ] = "openai",
    api_key_env: Annotated[
        str,
        typer.Option(help="Environment variable holding the API key (no key is sent if unset)."),
    ] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once (openai).")] = 4,
    max_retries: Annotated[
        int, typer.Option(help="Retries of a request after 408/409/429/5xx or network errors.")
    ] = 4,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one answer.")] = 60.0,
    backoff: Annotated[
        float,
        typer.Option(help="First retry delay in seconds (doubles each retry; Retry-After wins)."),
    ] = 1.0,
    scorers: Annotated[
        str, typer.Option(help="Comma-separated scorers to run: detection, fuzzing, or none.")
    ] = "detection,fuzzing",
    explain_top: Annotated[
        int, typer.Option(help="Top activating examples shown to the explainer.")
    ] = 10,
    explain_quantile: Annotated[
        int, typer.Option(help="Quantile examples shown to the explainer (spread over bands).")
    ] = 6,
    detection_examples: Annotated[
        int,
        typer.Option(help="Held-out activating contexts per detection test (+ as many others)."),
    ] = 10,
    fuzzing_examples: Annotated[
        int, typer.Option(help="Held-out contexts per fuzzing test (half falsely highlighted).")
    ] = 10,
    max_marks: Annotated[
        int, typer.Option(help="Most activating tokens highlighted per example.")
    ] = 5,
    price_per_1k_prompt: Annotated[
        float | None, typer.Option(help="Price per 1,000 prompt tokens, for the cost estimate.")
    ] = None,
    price_per_1k_completion: Annotated[
        float | None,
        typer.Option(help="Price per 1,000 completion tokens, for the cost estimate."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(help="Redo latents already explained with this --llm-model (else skipped)."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the scorers' example sampling.")] = 0,
    device: Annotated[
        str | None, c.device_option("Torch device of the transformers backend.")
    ] = None,
    json_output: c.JsonSummary = False,
) -> None:
    """Explain latents with an LLM and score the explanations (detection, fuzzing) → features.sqlite."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from saelab.analysis.database import FeatureDB
    from saelab.autointerp.client import LLMError, make_backend
    from saelab.autointerp.run import AutointerpAborted, AutointerpConfig, run_autointerp
    from saelab.autointerp.selection import parse_latents
    from saelab.explorer.run import database_path

    names = tuple(s.strip() for s in scorers.split(",") if s.strip() and s.strip() != "none")
    prices = None
    if price_per_1k_prompt is not None or price_per_1k_completion is not None:
        prices = (price_per_1k_prompt or 0.0, price_per_1k_completion or 0.0)
    with c.exit_on(LookupError, ValueError, OSError, LLMError):
        db_path = database_path(run)
        with FeatureDB(db_path) as db:
            chosen = parse_latents(latents, db)
        config = AutointerpConfig(
            explain_top=explain_top, explain_quantile=explain_quantile,
            detection_examples=detection_examples, fuzzing_examples=fuzzing_examples,
            max_marks=max_marks, scorers=names, seed=seed, overwrite=overwrite,
        )  # fmt: skip
        llm = make_backend(
            backend, llm_model, base_url=base_url, api_key=os.environ.get(api_key_env),
            concurrency=concurrency, max_retries=max_retries, timeout=timeout, backoff=backoff,
            device=device,
        )  # fmt: skip
    bar = Progress(
        TextColumn("explaining"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True),
    )  # fmt: skip
    with bar:
        task = bar.add_task("explain", total=len(chosen))
        try:
            summary = run_autointerp(
                db_path, chosen, llm, config, workers=concurrency if backend == "openai" else 1,
                prices=prices, on_done=lambda _: bar.advance(task),
            )  # fmt: skip
        except AutointerpAborted as error:
            bar.stop()
            stop = c.fail(error)
            if json_output:
                typer.echo(json.dumps({**error.summary, "aborted": str(error)}))
            raise stop from error
    if json_output:
        typer.echo(json.dumps(summary))
    else:
        Console().print(_table(summary))
        typer.echo(_totals(summary))
