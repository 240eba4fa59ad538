"""The `saelab train` command: flags and config file → RunConfig → run_training."""

from __future__ import annotations

import json

import typer

from saelab.train import cli_options as o
from saelab.train.pipeline import TrainingInterrupted, run_training


def train_command(
    model: o.Model = None,
    hook: o.Hook = None,
    corpus: o.Corpus = None,
    cache: o.Cache = None,
    arch: o.Arch = None,
    width: o.Width = None,
    tokens: o.Tokens = None,
    batch_size: o.BatchSize = None,
    lr: o.Lr = None,
    sparsity: o.Sparsity = None,
    k: o.K = None,
    bandwidth: o.Bandwidth = None,
    seed: o.Seed = None,
    device: o.Device = None,
    model_dtype: o.ModelDtype = None,
    context_size: o.ContextSize = None,
    checkpoint_every: o.CheckpointEvery = None,
    logger: o.Logger = None,
    max_memory_gb: o.MaxMemoryGb = None,
    out: o.Out = None,
    config: o.Config = None,
    resume: o.Resume = None,
    json_output: o.JsonOutput = False,
) -> None:
    """Train one SAE or a lockstep sweep (architectures × sparsity × hooks) from one activation stream."""
    log = (lambda msg: typer.echo(msg, err=True)) if json_output else typer.echo
    try:
        cfg = o.run_config_from_flags(
            resume=resume, config=config, model=model, hook=hook, corpus=corpus, cache=cache,
            arch=arch, width=width, tokens=tokens, batch_size=batch_size, lr=lr,
            sparsity=sparsity, k=k, bandwidth=bandwidth, seed=seed, device=device,
            model_dtype=model_dtype, context_size=context_size,
            checkpoint_every=checkpoint_every, logger=logger, max_memory_gb=max_memory_gb,
            out=out,
        )  # fmt: skip
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
