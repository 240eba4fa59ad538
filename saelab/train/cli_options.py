"""The `saelab train` options, shared by `saelab train` and `saelab sweep`, and their resolution.

Every option defaults to None, "not given": the value then comes from --config, else from
RunConfig/TrainConfig; `[default: …]` in the help says what that is.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from saelab import cli_common as c

if TYPE_CHECKING:
    from saelab.train.run_config import RunConfig

Model = Annotated[
    str | None,
    typer.Option(
        help="Model: gemma-3-270m, a local dir, a .gguf file or a hub id (or give --cache)."
    ),
]
Hook = Annotated[
    list[str] | None,
    typer.Option(help="Hook point (TransformerLens name); repeat for several hooks."),
]
TargetHook = Annotated[
    str | None,
    typer.Option(
        help="Train transcoders (SPEC §2.6): each SAE reads its --hook and predicts this hook, "
        "e.g. --hook blocks.6.hook_mlp_in --target-hook blocks.6.hook_mlp_out (default: SAEs)."
    ),
]
SkipConnection = Annotated[
    bool | None,
    typer.Option(
        "--skip-connection/--no-skip-connection",
        help="Transcoders only: add a learned linear skip x W_skipᵀ to ŷ (default: off).",
    ),
]
Corpus = Annotated[
    str | None,
    typer.Option(
        help="Corpus: python-stdlib, local files or a datasets name (default: python-stdlib)."
    ),
]
Cache = Annotated[
    str | None,
    typer.Option(help="Train from an activation cache folder instead of running the model."),
]
Arch = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated: jumprelu, topk, batchtopk, matryoshka, matryoshka_jumprelu, "
        "gated or relu (default: jumprelu)."
    ),
]
Width = Annotated[int | None, typer.Option(help="Latents per SAE (default: 16 × d_in).")]
Tokens = Annotated[
    int | None,
    typer.Option(help="Training tokens, the budget shared by every SAE (default: 2000000)."),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        help="Tokens per optimizer step (default: the power of 2 nearest tokens/1000, in "
        "[256, 4096]; 4096 with --recipe paper)."
    ),
]
Lr = Annotated[
    float | None,
    typer.Option(
        help="Learning rate (default: 2e-3 × √(batch/512) × √(4096/width), at most 1e-2; the "
        "published value with --recipe paper). Biases and thresholds train at 0.1× of it and a "
        "data-initialised b_dec not at all (config-file option lr_scales replaces this)."
    ),
]
Sparsity = Annotated[
    str | None,
    typer.Option(
        help="Sparsity coefficient(s) λ, comma-separated, for gated and relu (and the weight "
        "of jumprelu's sparsity loss); per architecture as ARCH:λ items, e.g. "
        "gated:0.3,gated:1,relu:5 (default: the architecture's recipe)."
    ),
]
K = Annotated[
    str | None,
    typer.Option(help="k value(s) for topk/batchtopk/matryoshka, comma-separated (default: 64)."),
]
GroupSizes = Annotated[
    str | None,
    typer.Option(
        help="Matryoshka latents per group, comma-separated, summing to --width; prefix g is "
        "the first g groups, SPEC §2.5 (default: prefixes of width/16, /8, /4, /2 and width)."
    ),
]
TargetL0 = Annotated[
    str | None,
    typer.Option(
        help="Target L0 value(s) for the quadratic sparsity loss of jumprelu and "
        "matryoshka_jumprelu, comma-separated, swept like --k (default: 32)."
    ),
]
SparsityLoss = Annotated[
    str | None,
    typer.Option(
        help="JumpReLU sparsity loss, SPEC §2.4: quadratic (λ·(L0/target − 1)²), l0 (the "
        "paper's λ·L0) or tanh (default: quadratic)."
    ),
]
Recipe = Annotated[
    str | None,
    typer.Option(
        help="budget: batch, LR, warm-ups and dead window derived from --tokens and --width, "
        "data-dependent init (SPEC §2.0); paper: each architecture's published recipe and "
        "init (default: budget)."
    ),
]
Bandwidth = Annotated[
    float | None,
    typer.Option(
        help="JumpReLU kernel bandwidth ε, SPEC §2.4 (default: 2 × the initial threshold θ₀ from "
        "the data; 0.001 with --recipe paper)."
    ),
]
Seed = Annotated[
    int | None, typer.Option(help="Seed of initialisation and data order (default: 0).")
]
Device = Annotated[
    str | None,
    typer.Option(
        help="Torch device: cpu, cuda, cuda:N or mps (default: cpu).",
        callback=c.checked_device,
    ),
]
ModelDtype = Annotated[
    str | None,
    typer.Option(help="Dtype the LM runs in: float32, float16 or bfloat16 (default: float32)."),
]
MatmulDtype = Annotated[
    str | None,
    typer.Option(
        help="Dtype of the SAE's encoder matmul: auto (bfloat16 where the device multiplies it "
        "natively: CUDA, or a CPU with AVX512-BF16/AMX; else float32), float32, bfloat16 or "
        "float16. Weights, thresholds, the decoder and every gradient stay float32 "
        "(default: auto)."
    ),
]
ContextSize = Annotated[
    int | None,
    typer.Option(help="Tokens per packed context, BOS included (default: 128)."),
]
CheckpointEvery = Annotated[
    int | None, typer.Option(help="Steps between checkpoints (default: 500).")
]
Logger = Annotated[
    list[str] | None,
    typer.Option(
        help="Extra logger: tensorboard or wandb (offline); repeatable (default: none, "
        "metrics.jsonl only)."
    ),
]
MaxMemoryGb = Annotated[
    float | None, typer.Option(help="Memory the sweep may use (default: what is free).")
]
TargetScaling = Annotated[
    float | None,
    typer.Option(
        help="Transcoders only: divide each target dimension by its standard deviation to "
        "this power α in the loss (folded into the decoder at the end), so a few "
        "high-variance dimensions do not take every latent; 0 = plain MSE (default: 0.5)."
    ),
]
Out = Annotated[str | None, typer.Option(help="Run directory to create (default: runs/run).")]
Config = Annotated[
    Path | None,
    typer.Option(
        help="YAML or TOML run config; flags override its values, it overrides the defaults."
    ),
]
Resume = Annotated[
    Path | None,
    typer.Option(help="Continue the run in this directory from its last checkpoint."),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]

TRAIN_FLAGS: dict[str, Any] = {
    "model": Model, "hook": Hook, "target_hook": TargetHook, "skip_connection": SkipConnection,
    "target_scaling": TargetScaling,
    "corpus": Corpus, "cache": Cache, "arch": Arch, "width": Width,
    "tokens": Tokens, "batch_size": BatchSize, "lr": Lr, "sparsity": Sparsity, "k": K,
    "target_l0": TargetL0, "sparsity_loss": SparsityLoss, "group_sizes": GroupSizes,
    "recipe": Recipe,
    "bandwidth": Bandwidth, "seed": Seed, "device": Device, "model_dtype": ModelDtype,
    "matmul_dtype": MatmulDtype, "context_size": ContextSize,
    "checkpoint_every": CheckpointEvery, "logger": Logger,
    "max_memory_gb": MaxMemoryGb, "out": Out, "config": Config,
}  # fmt: skip


def with_train_flags(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with the TRAIN_FLAGS options (default None) ahead of its own, for typer.

    `saelab train` and `saelab sweep` share these; the command gets them as its first
    argument, a dict for run_config_from_flags.
    """
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
    shared = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=t)
        for name, t in TRAIN_FLAGS.items()
    ]

    @functools.wraps(command)
    def wrapper(**options: Any) -> None:
        command({name: options.pop(name) for name in TRAIN_FLAGS}, **options)

    wrapper.__signature__ = inspect.Signature([*shared, *own])  # type: ignore[attr-defined]
    return wrapper


def _floats(text: str | None) -> list[float] | None:
    return None if text is None else [float(v) for v in text.split(",") if v.strip()]


def _sparsity(text: str | None) -> list[float] | dict[str, list[float]] | None:
    """ "0.001,0.01" → a shared list; "jumprelu:0.001,gated:0.3" → a per-architecture map."""
    if text is None or ":" not in text:
        return _floats(text)
    per_arch: dict[str, list[float]] = {}
    for item in filter(str.strip, text.split(",")):
        arch, sep, value = item.partition(":")
        if not sep:
            raise typer.BadParameter(f"mix of ARCH:λ and plain λ items in --sparsity {text!r}")
        per_arch.setdefault(arch.strip(), []).append(float(value))
    return per_arch


def _ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(v) for v in text.split(",") if v.strip()]


def run_config_from_flags(*, resume: Path | None, config: Path | None, **flags: Any) -> RunConfig:
    """The RunConfig of `--resume DIR` (its config.yaml), else of --config FILE + the flags."""
    from saelab.train.pipeline import CONFIG_FILE
    from saelab.train.run_config import RunConfig, read_config_file, resolve_run_config

    if resume is not None:
        cfg = RunConfig.from_dict(read_config_file(resume / CONFIG_FILE), str(resume / CONFIG_FILE))
        cfg.out = str(resume)
        cfg.validate()
        return cfg
    f = flags
    jumprelu = {name: f[name] for name in ("bandwidth", "sparsity_loss") if f[name] is not None}
    arch_options = {"jumprelu": jumprelu} if jumprelu else {}
    if jumprelu:
        arch_options["matryoshka_jumprelu"] = dict(jumprelu)
    if f["group_sizes"] is not None:
        for arch in ("matryoshka", "matryoshka_jumprelu"):
            arch_options.setdefault(arch, {})["group_sizes"] = _ints(f["group_sizes"])
    return resolve_run_config(config, {
        "model": f["model"], "hooks": f["hook"] or None, "target_hook": f["target_hook"],
        "skip_connection": f["skip_connection"], "target_scaling": f["target_scaling"],
        "corpus": f["corpus"],
        "cache": f["cache"], "archs": f["arch"].split(",") if f["arch"] else None,
        "width": f["width"], "tokens": f["tokens"], "batch_size": f["batch_size"], "lr": f["lr"],
        "sparsity": _sparsity(f["sparsity"]), "k": _ints(f["k"]),
        "arch_options": arch_options or None,
        "target_l0": _floats(f["target_l0"]), "recipe": f["recipe"],
        "seed": f["seed"], "device": f["device"], "model_dtype": f["model_dtype"],
        "matmul_dtype": f["matmul_dtype"], "context_size": f["context_size"],
        "checkpoint_every": f["checkpoint_every"],
        "loggers": f["logger"] or None, "max_memory_gb": f["max_memory_gb"], "out": f["out"],
    })  # fmt: skip
