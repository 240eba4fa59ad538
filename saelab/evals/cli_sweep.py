"""The `saelab sweep` command: the `saelab train` options + eval options → run_sweep → table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from saelab import cli_common as c
from saelab.train import cli_options as o


@o.with_train_flags
def sweep_command(
    flags: dict[str, Any],
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the sweep in this directory: finish training from its last "
            "checkpoint (a finished run is loaded, not redone), evaluate only the SAEs without "
            "an eval.json for the same eval settings, rebuild the table and plots."
        ),
    ] = None,
    eval_tokens: Annotated[
        int | None,
        typer.Option(
            help="Held-out tokens each SAE is evaluated on, BOS/EOS/pad not counted "
            "(default: 8192)."
        ),
    ] = None,
    eval_corpus: Annotated[
        str | None,
        typer.Option(
            help="Corpus whose held-out split is evaluated (default: the training corpus; "
            "with --cache, the corpus recorded in the cache manifest)."
        ),
    ] = None,
    eval_batch_size: Annotated[
        int | None,
        typer.Option(help="Contexts per LM forward pass in the evaluation (default: 8)."),
    ] = None,
    eval_context_size: Annotated[
        int | None,
        typer.Option(
            help="Tokens per evaluation context, BOS included (default: the training one)."
        ),
    ] = None,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the table as JSON on stdout (progress and logs on stderr)."
        ),
    ] = False,
) -> None:
    """Train architectures × sparsity with equal width and budget, evaluate all, write Pareto plots.

    Writes every SAE's eval.json into its folder and, at the run root, sweep.csv, sweep.md and
    plots/pareto_delta_lm_loss.{png,svg} and plots/pareto_fvu.{png,svg}. Training options not
    given take the --config file's value, else the default shown. On --resume, eval options
    not given again are taken from the run's sweep.yaml.
    """
    from rich.console import Console

    from saelab.evals.sweep import run_sweep
    from saelab.evals.sweep_table import rich_table
    from saelab.train.pipeline import TrainingInterrupted

    log = (lambda msg: typer.echo(msg, err=True)) if json_output else typer.echo
    eval_options = {
        "tokens": eval_tokens, "corpus": eval_corpus, "batch_size": eval_batch_size,
        "context_size": eval_context_size,
    }  # fmt: skip
    run_dir = resume or flags["out"]
    try:
        cfg = o.run_config_from_flags(resume=resume, **flags)
        run_dir = cfg.out
        result = run_sweep(cfg, eval_options, resume=resume is not None, log=log, warn=c.warn)
    except (TrainingInterrupted, KeyboardInterrupt):
        typer.echo(f"Interrupted; continue with: saelab sweep --resume {run_dir}", err=True)
        raise typer.Exit(130) from None
    except (ValueError, LookupError, FileExistsError, MemoryError, OSError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from None
    if result is None:  # a non-main rank under torchrun
        return
    if json_output:
        typer.echo(json.dumps(result.to_json()))
    else:
        Console().print(rich_table(result.rows, result.title))
        typer.echo(
            f"Wrote {result.files['csv']}, {result.files['markdown']} and plots in {result.out / 'plots'}"
        )
    if result.failures:
        names = ", ".join(sorted(result.failures))
        typer.echo(
            f"Error: evaluation failed for {names} (details above); the others' results are "
            f"saved. Retry them with: saelab sweep --resume {result.out}",
            err=True,
        )
        raise typer.Exit(1)
