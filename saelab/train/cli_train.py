"""The `saelab train` command: flags and config file → RunConfig → run_training → final table."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from saelab import cli_common as c
from saelab.train import cli_options as o

if TYPE_CHECKING:
    from saelab.train.pipeline import SweepMember


def final_table(members: list[SweepMember]) -> list[str]:
    """The end-of-run lines: L0, FVU, dead fraction and SAE path of every (trained) member."""
    first = members[0].final
    width = max(len("member"), *(len(m.name) for m in members))
    lines = [
        f"Final metrics (L0, FVU: mean over the last {first['steps_averaged']} training steps; "
        f"dead: no firing in the last {first['dead_window_tokens']:,} tokens)",
        f"{'member':<{width}}  {'L0':>8}  {'FVU':>7}  {'dead':>6}  SAE",
    ]
    for m in members:
        f = m.final
        lines.append(
            f"{m.name:<{width}}  {f['l0']:>8.2f}  {f['fvu']:>7.4f}  {f['dead_fraction']:>6.1%}  "
            f"{m.directory / 'sae'}"
        )
    return lines


@o.with_train_flags
def train_command(
    flags: dict[str, Any],
    resume: o.Resume = None,
    json_output: o.JsonOutput = False,
) -> None:
    """Train one SAE or a lockstep sweep (architectures × sparsity × hooks) from one activation stream.

    Options not given take the --config file's value, else the default shown.
    """
    from saelab.train.pipeline import RunAlreadyFinished, TrainingInterrupted, run_training

    log = (lambda msg: typer.echo(msg, err=True)) if json_output else typer.echo
    try:
        cfg = o.run_config_from_flags(resume=resume, **flags)
        members = run_training(cfg, resume=resume is not None, log=log, warn=c.warn)
    except RunAlreadyFinished as done:
        log(str(done))
        if json_output:
            typer.echo(json.dumps({"run": cfg.out, "already_finished": True}))
        return
    except TrainingInterrupted as stop:
        typer.echo(str(stop), err=True)
        raise typer.Exit(130) from None
    except (ValueError, LookupError, FileExistsError, MemoryError, OSError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from None
    if any(m.final is None for m in members):  # a non-main DDP rank: rank 0 reports
        return
    if json_output:
        saes = {m.name: str(m.directory / "sae") for m in members}
        final = {m.name: m.final for m in members}
        typer.echo(json.dumps({"run": cfg.out, "saes": saes, "final": final}))
    else:
        typer.echo("\n".join(final_table(members)))
