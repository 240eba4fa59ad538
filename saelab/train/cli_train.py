"""The `saelab train` command: flags and config file → RunConfig → run_training."""

from __future__ import annotations

import json
from typing import Any

import typer

from saelab.train import cli_options as o
from saelab.train.pipeline import TrainingInterrupted, run_training


@o.with_train_flags
def train_command(
    flags: dict[str, Any],
    resume: o.Resume = None,
    json_output: o.JsonOutput = False,
) -> None:
    """Train one SAE or a lockstep sweep (architectures × sparsity × hooks) from one activation stream."""
    log = (lambda msg: typer.echo(msg, err=True)) if json_output else typer.echo
    try:
        cfg = o.run_config_from_flags(resume=resume, **flags)
        members = run_training(cfg, resume=resume is not None, log=log)
    except TrainingInterrupted as stop:
        typer.echo(str(stop), err=True)
        raise typer.Exit(130) from None
    except (ValueError, LookupError, FileExistsError, MemoryError, OSError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from None
    result = {m.name: str(m.directory / "sae") for m in members}
    if json_output:
        typer.echo(json.dumps({"run": cfg.out, "saes": result}))
    else:
        for name, path in result.items():
            typer.echo(f"{name}: {path}")
