"""`saelab analyze` and `saelab neuronpedia`: build features.sqlite and export it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from saelab import cli_common as c

RunArg = Annotated[
    Path,
    typer.Argument(
        help="Run directory (with sae/ and config.yaml), SAE directory, or Gemma Scope params.npz."
    ),
]


def analyze_command(
    path: RunArg,
    tokens: Annotated[
        int, typer.Option(help="Held-out tokens to stream (BOS/EOS/pad not counted).")
    ] = 16384,
    model: c.SaeModel = None,
    hook: c.SaeHook = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            help="Corpus whose held-out split is read (default: the run's, else python-stdlib)."
        ),
    ] = None,
    batch_size: c.BatchSize = 8,
    context_size: c.SaeContextSize = None,
    top_k: Annotated[int, typer.Option(help="Top activating examples kept per latent.")] = 20,
    window: Annotated[
        int, typer.Option(help="Context tokens kept on each side of an example's max token.")
    ] = 12,
    quantiles: Annotated[
        int, typer.Option(help="Activation quantile bands of the sampled examples.")
    ] = 4,
    per_quantile: Annotated[int, typer.Option(help="Examples shown per quantile band.")] = 5,
    reservoir: Annotated[
        int, typer.Option(help="Firing events sampled uniformly per latent (quantile examples).")
    ] = 40,
    histograms: Annotated[
        int, typer.Option(help="Also plot histogram PNGs of this many most frequent latents.")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the document order and the reservoirs.")] = 0,
    device: c.Device = None,
    dtype: c.LmDtype = "float32",
    out: Annotated[
        Path | None, typer.Option(help="Database path (default: RUN/features.sqlite).")
    ] = None,
    json_output: c.JsonSummary = False,
) -> None:
    """Feature stats, top/quantile examples, logit lens, neighbours → features.sqlite + figures."""
    from saelab.analysis.accumulator import AnalysisConfig
    from saelab.analysis.command import run_analyze_command

    with c.exit_on(*c.INPUT_ERRORS):
        config = AnalysisConfig(
            top_k=top_k, reservoir=reservoir, quantiles=quantiles, per_quantile=per_quantile,
            window=window, seed=seed,
        )  # fmt: skip
        summary = run_analyze_command(
            path=path, tokens=tokens, model=model, hook=hook, corpus=corpus,
            batch_size=batch_size, context_size=context_size, device=device, dtype=dtype,
            out=out, config=config, histograms=histograms,
        )  # fmt: skip
    if json_output:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"Analysed {summary['d_sae']:,} latents on {summary['tokens']:,} tokens "
            f"({summary['dead']:,} never fired) in {summary['total_s']:.0f} s → {summary['database']}"
        )
        typer.echo(f"Figures: {', '.join(summary['figures'])}")


def neuronpedia_command(
    path: Annotated[Path, typer.Argument(help="Run directory or features.sqlite to export.")],
    out: Annotated[
        Path, typer.Option(help="Folder for the export (written to OUT/MODEL_ID/SOURCE_ID/).")
    ],
    model_id: Annotated[
        str | None, typer.Option(help="Neuronpedia model id (default: the model's name).")
    ] = None,
    source_id: Annotated[
        str | None,
        typer.Option(
            help="Neuronpedia source/layer id (default: from the hook, e.g. 6-saelab-res)."
        ),
    ] = None,
    hf_repo: Annotated[
        str | None,
        typer.Option(
            help="Hub repo holding the weights (`saelab push`), recorded in source.jsonl."
        ),
    ] = None,
    hf_folder: Annotated[
        str | None, typer.Option(help="Folder of the weights in --hf-repo (`saelab push --path`).")
    ] = None,
    json_output: c.JsonSummary = False,
) -> None:
    """Export features.sqlite as a Neuronpedia export (release, model, source set, source;
    features, activations and explanations as gzipped JSON lines; docs/explorer.md)."""
    from saelab.analysis.database import FeatureDB
    from saelab.analysis.neuronpedia import export_neuronpedia
    from saelab.explorer.run import database_path

    with c.exit_on(ValueError), FeatureDB(database_path(path)) as db:
        summary = export_neuronpedia(db, out, model_id, source_id, hf_repo, hf_folder)
    summary = {
        key: str(value) if isinstance(value, Path) else value for key, value in summary.items()
    }
    if json_output:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"Wrote {summary['latents']:,} features, {summary['examples']:,} activations and "
            f"{summary['explanations']:,} explanations to {summary['folder']}"
        )
