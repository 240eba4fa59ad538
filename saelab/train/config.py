"""TrainConfig and the per-architecture recipe defaults it falls back on (SPEC §2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from saelab.validation import check_known_fields, check_values


@dataclass(frozen=True)
class Recipe:
    """An architecture's published training recipe, used where TrainConfig leaves None."""

    lr: float
    betas: tuple[float, float]
    sparsity_coefficient: float
    lr_warmup_steps: int
    lr_decay_fraction: float
    sparsity_warmup_steps: int | None
    sparsity_warmup_fraction: float


RECIPES: dict[str, Recipe] = {
    # SPEC §2.4 (Gemma Scope): Adam β=(0, 0.999), cosine LR warm-up over 1,000 steps,
    # λ linear warm-up over 10,000 steps (both capped at 10% of the run for short runs).
    "jumprelu": Recipe(7e-5, (0.0, 0.999), 1e-3, 1000, 0.0, 10_000, 0.0),
    # SPEC §2.1 (Anthropic, April 2024): λ warm-up over 5% of steps, LR decay over the last 20%.
    "relu": Recipe(5e-5, (0.9, 0.999), 5.0, 0, 0.2, None, 0.05),
    # SPEC §2.2 (OpenAI 2024): no sparsity penalty.
    "topk": Recipe(2e-4, (0.9, 0.999), 0.0, 0, 0.2, None, 0.0),
    "batchtopk": Recipe(2e-4, (0.9, 0.999), 0.0, 0, 0.2, None, 0.0),
    # SPEC §2.3: trained like the RI-L1 ReLU baseline.
    "gated": Recipe(5e-5, (0.9, 0.999), 1.0, 0, 0.2, None, 0.05),
}


@dataclass
class TrainConfig:
    """How to train one SAE or a lockstep group; None means "the architecture's recipe"."""

    total_tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float | None = None
    sparsity_coefficient: float | None = None
    seed: int = 0
    device: str = "cpu"
    betas: tuple[float, float] | None = None
    adam_eps: float = 1e-8
    lr_warmup_steps: int | None = None
    lr_warmup: str = "cosine"
    lr_warmup_start: float = 0.1
    lr_decay_fraction: float | None = None
    sparsity_warmup_steps: int | None = None
    grad_clip_norm: float | None = 1.0
    dead_window: int | None = None
    normalize: bool = True
    norm_estimate_tokens: int = 100_000
    resample_every: int | None = None
    log_every: int = 50
    progress: bool = False

    def __post_init__(self) -> None:
        checks = {
            "total_tokens": (self.total_tokens >= 1, "an integer ≥ 1"),
            "batch_size": (self.batch_size >= 1, "an integer ≥ 1"),
            "lr": (self.lr is None or self.lr > 0, "a positive float"),
            "sparsity_coefficient": (
                self.sparsity_coefficient is None or self.sparsity_coefficient >= 0,
                "a float ≥ 0",
            ),
            "lr_warmup": (self.lr_warmup in ("cosine", "linear"), "'cosine' or 'linear'"),
            "lr_warmup_start": (0 <= self.lr_warmup_start <= 1, "in [0, 1]"),
            "lr_decay_fraction": (
                self.lr_decay_fraction is None or 0 <= self.lr_decay_fraction <= 1,
                "in [0, 1]",
            ),
            "grad_clip_norm": (self.grad_clip_norm is None or self.grad_clip_norm > 0, "> 0"),
            "dead_window": (self.dead_window is None or self.dead_window >= 1, "≥ 1 token"),
            "resample_every": (self.resample_every is None or self.resample_every >= 1, "≥ 1"),
            "log_every": (self.log_every >= 1, "≥ 1"),
        }
        check_values(self, checks, "TrainConfig")

    @property
    def total_steps(self) -> int:
        return max(1, self.total_tokens // self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_known_fields(cls, d, "TrainConfig")
        return cls(**d)
