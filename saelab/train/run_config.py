"""RunConfig: everything `saelab train` needs, from a YAML/TOML file and flags (flags win)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saelab.devices import check_device
from saelab.lm.dtypes import DTYPES, parse_dtype
from saelab.sae import architectures, sae_class
from saelab.train.config import PAPER_SAE_OPTIONS, TrainConfig, recipe_family
from saelab.validation import check_known_fields

TOPK_ARCHS = ("topk", "batchtopk", "matryoshka")
# TrainConfig fields a run config may set directly (the rest are derived from the run).
TRAIN_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("total_tokens", "progress")
)


@dataclass
class RunConfig:
    """A training run: data source, the SAEs of the (lockstep) sweep, and how to train them."""

    out: str = "runs/run"
    model: str | None = None
    hooks: list[str] = field(default_factory=list)
    # Transcoders (SPEC §2.6): every SAE reads its hook and predicts this hook's activations.
    target_hook: str | None = None
    skip_connection: bool = False
    corpus: str = "python-stdlib"
    cache: str | None = None
    archs: list[str] = field(default_factory=lambda: ["jumprelu"])
    width: int | None = None
    # λ values for every λ-architecture, or per architecture: {jumprelu: [...], gated: [...]}.
    sparsity: list[float] | dict[str, list[float]] = field(default_factory=list)
    k: list[int] = field(default_factory=lambda: [64])
    # JumpReLU target L0 values (quadratic sparsity loss, SPEC §2.4), swept like k.
    target_l0: list[float] = field(default_factory=list)
    arch_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: int = 2_000_000
    context_size: int = 128
    model_batch_size: int = 8
    model_dtype: str = "float32"
    checkpoint_every: int = 500
    loggers: list[str] = field(default_factory=list)
    max_memory_gb: float | None = None
    train: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Fail before any work, naming the field and the valid values."""
        if not self.hooks:
            raise ValueError("hooks: give at least one hook (e.g. --hook blocks.6.hook_resid_post)")
        if self.target_hook is not None and self.target_hook in self.hooks:
            raise ValueError(
                f"target_hook: {self.target_hook!r} is also an input hook; a transcoder reads "
                "one hook and predicts another (or drop --target-hook for an SAE)"
            )
        if self.skip_connection and self.target_hook is None:
            raise ValueError("skip_connection: needs a transcoder (give --target-hook)")
        if self.train.get("target_scaling") and self.target_hook is None:
            raise ValueError("target_scaling: weights a transcoder's target (give --target-hook)")
        if self.model is None and self.cache is None:
            raise ValueError("model/cache: give --model (activations computed live) or --cache DIR")
        for arch in self.archs:
            if arch not in architectures():
                raise ValueError(f"arch: unknown architecture {arch!r}; valid: {architectures()}")
        if self.width is not None and self.width < 1:
            raise ValueError(f"width: must be an integer ≥ 1, got {self.width}")
        if isinstance(self.sparsity, dict):
            unknown = sorted(set(self.sparsity) - set(self.archs))
            if unknown:
                raise ValueError(
                    f"sparsity: values given for {unknown}, which are not in archs {self.archs}"
                )
        for arch in self.archs:
            for s in self.sparsity_for(arch):
                if s < 0:
                    raise ValueError(f"sparsity: coefficients must be ≥ 0, got {s}")
        for k in self.k:
            if k < 1:
                raise ValueError(f"k: must be an integer ≥ 1, got {k}")
        for t in self.target_l0:
            if t <= 0:
                raise ValueError(f"target_l0: must be > 0, got {t}")
        try:
            parse_dtype(self.model_dtype)
        except ValueError:
            raise ValueError(
                f"model_dtype: unknown dtype {self.model_dtype!r}; valid: {', '.join(DTYPES)}"
            ) from None
        check_device(self.train.get("device"))
        if self.tokens < 1:
            raise ValueError(f"tokens: must be ≥ 1, got {self.tokens}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every: must be ≥ 1 step, got {self.checkpoint_every}")
        for name in self.loggers:
            if name not in ("tensorboard", "wandb"):
                raise ValueError(
                    f"loggers: unknown logger {name!r}; valid: ['tensorboard', 'wandb']"
                )
        for arch, options in self.arch_options.items():
            allowed = set(sae_class(arch).options)
            unknown = sorted(set(options) - allowed)
            if unknown:
                raise ValueError(
                    f"arch_options.{arch}: unknown option(s) {unknown}; valid: {sorted(allowed)}"
                )
        unknown = sorted(set(self.train) - set(TRAIN_FIELDS))
        if unknown:
            raise ValueError(f"train: unknown field(s) {unknown}; valid: {sorted(TRAIN_FIELDS)}")
        self.train_config(None, None)

    def train_config(
        self, arch: str | None, sparsity: float | None, device: str | None = None
    ) -> TrainConfig:
        """The TrainConfig of one SAE of the sweep (device: this process's, under torchrun)."""
        extra = {"sparsity_coefficient": sparsity} if sparsity is not None else {}
        if device is not None:
            extra["device"] = device
        values = {**self.train, "total_tokens": self.tokens, **extra}
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return TrainConfig(**values)

    def sweep(self) -> list[tuple[str, str, dict[str, Any], float | None]]:
        """(hook, arch, options, sparsity coefficient) for every SAE: hooks × archs × settings."""
        runs = []
        paper = self.train.get("recipe") == "paper"
        for hook in self.hooks:
            for arch in self.archs:
                options = dict(PAPER_SAE_OPTIONS[recipe_family(arch)] if paper else {})
                options |= self.arch_options.get(arch, {})
                if arch in TOPK_ARCHS:
                    runs += [(hook, arch, options | {"k": k}, None) for k in self.k]
                    continue
                takes_target = "target_l0" in sae_class(arch).options
                targets = self.target_l0 if takes_target and self.target_l0 else [None]
                for t in targets:
                    member = options | ({"target_l0": t} if t is not None else {})
                    runs += [(hook, arch, member, s) for s in (self.sparsity_for(arch) or [None])]
        return runs

    def data_hooks(self) -> list[str]:
        """The hooks the run reads, side by side: the input hooks, then any target hook."""
        return [*self.hooks, *([self.target_hook] if self.target_hook else [])]

    def sparsity_for(self, arch: str) -> list[float]:
        """The λ values of one architecture (the shared list, or its entry in the per-arch map)."""
        if isinstance(self.sparsity, dict):
            return list(self.sparsity.get(arch, []))
        return list(self.sparsity)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        check_known_fields(cls, d, source)
        return cls(**d)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or TOML (.toml) run config as a dict."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ValueError(
            f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'} ({e})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys at the top level")
    return data


def resolve_run_config(file: str | Path | None, overrides: dict[str, Any]) -> RunConfig:
    """File values, then flag overrides (None means "not given"), validated."""
    values = read_config_file(file) if file else {}
    source = str(file) if file else "flags"
    cfg = RunConfig.from_dict(values, source)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in TRAIN_FIELDS:
            cfg.train[key] = value
        else:
            setattr(cfg, key, value)
    cfg.validate()
    return cfg
