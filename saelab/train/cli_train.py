"""The `saelab train` command: flags and config file → RunConfig → run_training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from saelab.train.pipeline import CONFIG_FILE, TrainingInterrupted, run_training
from saelab.train.run_config import RunConfig, read_config_file, resolve_run_config


def _floats(text: str | None) -> list[float] | None:
    return None if text is None else [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(v) for v in text.split(",") if v.strip()]


def train_command(
    model: Annotated[
        str | None, typer.Option(help="Model: gemma-3-270m, a local dir, a .gguf file or a hub id.")
    ] = None,
    hook: Annotated[
        list[str] | None,
        typer.Option(help="Hook point (TransformerLens name); repeat for several hooks."),
    ] = None,
    corpus: Annotated[
        str | None, typer.Option(help="Corpus: python-stdlib, local files or a datasets name.")
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option(help="Train from an activation cache folder instead of running the model."),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture(s), comma-separated: jumprelu, topk, batchtopk, gated, relu."
        ),
    ] = None,
    width: Annotated[int | None, typer.Option(help="Latents per SAE (default 16 × d_in).")] = None,
    tokens: Annotated[
        int | None, typer.Option(help="Training tokens (the budget shared by every SAE).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Tokens per optimizer step.")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default: the architecture's recipe).")
    ] = None,
    sparsity: Annotated[
        str | None,
        typer.Option(help="Sparsity coefficient(s) λ, comma-separated (jumprelu, gated, relu)."),
    ] = None,
    k: Annotated[
        str | None, typer.Option(help="k value(s) for topk/batchtopk, comma-separated.")
    ] = None,
    bandwidth: Annotated[
        float | None, typer.Option(help="JumpReLU kernel bandwidth ε (SPEC §2.4).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of initialisation and data order.")] = None,
    device: Annotated[str | None, typer.Option(help="Torch device (cpu, cuda, cuda:1).")] = None,
    model_dtype: Annotated[str | None, typer.Option(help="Dtype the LM runs in.")] = None,
    context_size: Annotated[
        int | None, typer.Option(help="Tokens per packed context (BOS included).")
    ] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    logger: Annotated[
        list[str] | None,
        typer.Option(help="Extra logger: tensorboard or wandb (offline); repeatable."),
    ] = None,
    max_memory_gb: Annotated[
        float | None, typer.Option(help="Memory the sweep may use (default: what is free).")
    ] = None,
    out: Annotated[str | None, typer.Option(help="Run directory to create.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML or TOML run config; flags override its values.")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this directory from its last checkpoint."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON on stdout.")
    ] = False,
) -> None:
    """Train one SAE or a lockstep sweep (architectures × sparsity × hooks) from one activation stream."""
    log = (lambda msg: typer.echo(msg, err=True)) if json_output else typer.echo
    try:
        if resume is not None:
            cfg = RunConfig.from_dict(
                read_config_file(resume / CONFIG_FILE), str(resume / CONFIG_FILE)
            )
            cfg.out = str(resume)
            cfg.validate()
        else:
            arch_options = {"jumprelu": {"bandwidth": bandwidth}} if bandwidth is not None else None
            cfg = resolve_run_config(config, {
                "model": model, "hooks": hook or None, "corpus": corpus, "cache": cache,
                "archs": arch.split(",") if arch else None, "width": width, "tokens": tokens,
                "batch_size": batch_size, "lr": lr, "sparsity": _floats(sparsity), "k": _ints(k),
                "arch_options": arch_options, "seed": seed, "device": device,
                "model_dtype": model_dtype, "context_size": context_size,
                "checkpoint_every": checkpoint_every, "loggers": logger or None,
                "max_memory_gb": max_memory_gb, "out": out,
            })  # fmt: skip
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
