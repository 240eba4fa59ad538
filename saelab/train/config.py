"""TrainConfig and the per-architecture recipe defaults it falls back on (SPEC §2)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from saelab.validation import check_known_fields, check_values

# TrainConfig.matmul_dtype (saelab.kernels.resolve_matmul_dtype): "auto" is bfloat16 where the
# device multiplies bf16 natively, else the SAE's own KernelOptions.
MATMUL_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Recipe:
    """An architecture's training schedule, used where TrainConfig leaves None."""

    lr: float
    betas: tuple[float, float]
    sparsity_coefficient: float
    lr_warmup_steps: int
    lr_decay_fraction: float
    sparsity_warmup_steps: int | None
    sparsity_warmup_fraction: float
    # Per-parameter LR multipliers (TrainConfig.lr_scales); parameters not named train at 1×.
    lr_scales: dict[str, float] = dataclasses.field(default_factory=dict)


PAPER_RECIPES: dict[str, Recipe] = {
    # SPEC §2.4 (Gemma Scope): Adam β=(0, 0.999), cosine LR warm-up over 1,000 steps,
    # λ linear warm-up over 10,000 steps (both capped at 10% of the run for short runs).
    "jumprelu": Recipe(7e-5, (0.0, 0.999), 1e-3, 1000, 0.0, 10_000, 0.0),
    # SPEC §2.1 (Anthropic, April 2024): λ warm-up over 5% of steps, LR decay over the last 20%.
    "relu": Recipe(5e-5, (0.9, 0.999), 5.0, 0, 0.2, None, 0.05),
    # SPEC §2.2 (OpenAI 2024): no sparsity penalty.
    "topk": Recipe(2e-4, (0.9, 0.999), 0.0, 0, 0.2, None, 0.0),
    "batchtopk": Recipe(2e-4, (0.9, 0.999), 0.0, 0, 0.2, None, 0.0),
    # SPEC §2.5 (Bussmann et al. 2025): trained as BatchTopK.
    "matryoshka": Recipe(2e-4, (0.9, 0.999), 0.0, 0, 0.2, None, 0.0),
    # SPEC §2.3: trained like the RI-L1 ReLU baseline.
    "gated": Recipe(5e-5, (0.9, 0.999), 1.0, 0, 0.2, None, 0.05),
}
# SAE options that turn off saelab's departures from the papers (SPEC §2.0, §2.4).
PAPER_SAE_OPTIONS: dict[str, dict[str, Any]] = {
    "jumprelu": {
        "b_dec_init": "zeros",
        "encoder_init": "transpose",
        "init_threshold": 0.001,
        "bandwidth": 0.001,
        "sparsity_loss": "l0",
        "aux_coefficient": 0.0,
        "pre_act_coefficient": 0.0,
    },
    "relu": {"b_dec_init": "zeros", "encoder_init": "transpose"},
    "gated": {"b_dec_init": "zeros", "encoder_init": "transpose"},
    # OpenAI's TopK already starts b_dec at the geometric median (SPEC §2.2).
    "topk": {"encoder_init": "transpose"},
    "batchtopk": {"encoder_init": "transpose"},
    "matryoshka": {"encoder_init": "transpose"},
}
# TrainConfig.target_scaling's default α: on gemma-3-270m's layer-6 MLP transcoders it halved
# Δ LM loss against α = 0 (docs/RESULTS.md, "A transcoder of layer 6's MLP").
DEFAULT_TARGET_SCALING = 0.5
# Budget recipe (docs/jumprelu-training.md, "budget defaults"): Adam LR measured best for width
# 4,096 at batch 512 on gemma-3-270m, scaled by √(batch/512) and by 1/√width (Gao et al. 2024).
BUDGET_LR = 2e-3
# Offsets train slower than the weights: at the full LR a latent's b_enc (or θ) drops below
# all its pre-activations within a few steps and the latent dies, and b_dec, which starts at
# the data's geometric median (SPEC §2.0), drifts; both measured in docs/jumprelu-training.md.
BUDGET_OFFSET_LR_SCALE = 0.1
BUDGET_LR_BATCH = 512
BUDGET_LR_WIDTH = 4096
MAX_BUDGET_LR = 1e-2
# Steps a budget run aims for: the batch is the power of 2 nearest tokens / this, in [256, 4096].
BUDGET_STEPS = 1000
MIN_BATCH, MAX_BATCH = 256, 4096
BUDGET_WARMUP_FRACTION = 0.05
BUDGET_DECAY_FRACTION = 0.2
# L1-type λ in SPEC §1 units (E‖x‖² = 1), measured on gemma-3-270m at 500k tokens
# (docs/jumprelu-training.md, "Gated and ReLU"): Gated 0.05 → L0 34 (0.03 → 65, 0.1 → 12);
# ReLU 0.05 → L0 110, FVU 0.099 (0.15 → L0 77, FVU 0.24; Anthropic's 5 shuts every latent).
BUDGET_SPARSITY = {
    "relu": 0.05,
    "gated": 0.05,
    "topk": 0.0,
    "batchtopk": 0.0,
    "matryoshka": 0.0,
}
# JumpReLU λ per sparsity loss: quadratic is a unit-free penalty on L0/target (SPEC §2.4).
JUMPRELU_SPARSITY = {"quadratic": 1.0, "l0": 1e-3, "tanh": 1e-3}
RECIPE_NAMES = ("budget", "paper")
# Architectures trained with another one's recipes and paper options: Matryoshka with JumpReLU
# codes is a JumpReLU SAE with a nested reconstruction loss (SPEC §2.5).
RECIPE_OF = {"matryoshka_jumprelu": "jumprelu"}


def recipe_family(architecture: str) -> str:
    """The architecture whose recipes (PAPER_RECIPES, budget λ, PAPER_SAE_OPTIONS) apply."""
    return RECIPE_OF.get(architecture, architecture)


def budget_batch_size(total_tokens: int) -> int:
    """The power of 2 nearest total_tokens / BUDGET_STEPS, clamped to [256, 4096]."""
    target = max(total_tokens / BUDGET_STEPS, 1.0)
    return int(min(MAX_BATCH, max(MIN_BATCH, 2 ** round(math.log2(target)))))


def budget_lr(batch_size: int, d_sae: int) -> float:
    """BUDGET_LR scaled by √(batch/512)·√(4096/width), capped at MAX_BUDGET_LR."""
    lr = BUDGET_LR * math.sqrt(batch_size / BUDGET_LR_BATCH) * math.sqrt(BUDGET_LR_WIDTH / d_sae)
    return min(lr, MAX_BUDGET_LR)


def budget_lr_scales(sae_cfg: Any) -> dict[str, float]:
    """b_dec frozen where it starts from the data, encoder offsets at BUDGET_OFFSET_LR_SCALE."""
    from saelab.sae.registry import sae_class

    scales = {"b_dec": 0.0} if sae_cfg.b_dec_init != "zeros" else {}
    return scales | dict.fromkeys(
        sae_class(sae_cfg.architecture).encoder_offsets, BUDGET_OFFSET_LR_SCALE
    )


def recipe_for(sae_cfg: Any, config: TrainConfig) -> Recipe:
    """The schedule defaults for one SAE: the paper's (recipe="paper") or the budget rules."""
    arch = recipe_family(sae_cfg.architecture)
    if config.recipe == "paper":
        return PAPER_RECIPES[arch]
    steps = config.total_steps
    sparsity = (
        JUMPRELU_SPARSITY[sae_cfg.sparsity_loss] if arch == "jumprelu" else BUDGET_SPARSITY[arch]
    )
    return Recipe(
        lr=budget_lr(config.batch_size, sae_cfg.d_sae),
        lr_scales=budget_lr_scales(sae_cfg),
        betas=(0.9, 0.999),
        sparsity_coefficient=sparsity,
        lr_warmup_steps=int(steps * BUDGET_WARMUP_FRACTION),
        lr_decay_fraction=BUDGET_DECAY_FRACTION,
        sparsity_warmup_steps=None,
        sparsity_warmup_fraction=0.0 if arch == "jumprelu" else 0.05,
    )


@dataclass
class TrainConfig:
    """How to train one SAE or a lockstep group; None means "the architecture's recipe"."""

    total_tokens: int = 2_000_000
    # None: the budget rule (budget_batch_size), 4,096 under the paper recipe.
    batch_size: int | None = None
    # "budget": schedules derived from the run's steps and width; "paper": PAPER_RECIPES.
    recipe: str = "budget"
    lr: float | None = None
    sparsity_coefficient: float | None = None
    seed: int = 0
    device: str = "cpu"
    betas: tuple[float, float] | None = None
    adam_eps: float = 1e-8
    # Per-parameter LR multipliers by parameter name, e.g. {"b_dec": 0.1}; None: the recipe's
    # (budget: budget_lr_scales; paper: none).
    lr_scales: dict[str, float] | None = None
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
    # Encoder matmul dtype (MATMUL_DTYPES): "auto" multiplies in bf16 where the
    # device does so natively (≈4.7× fp32 on an AVX512-BF16 CPU) and keeps the SAE's own
    # setting elsewhere; weights, θ, the decoder and every gradient stay fp32.
    matmul_dtype: str = "auto"
    # Transcoders (SPEC §2.6): each target dimension y_j is divided by σ_j^α (σ_j its std on
    # the first tokens, times one constant so E‖y/v‖² = 1) while training, and the divisor is
    # folded into W_dec, b_dec and W_skip at the end. 0: the plain ‖y − ŷ‖²; None:
    # DEFAULT_TARGET_SCALING. An SAE has no target and takes only None or 0.
    target_scaling: float | None = None

    def __post_init__(self) -> None:
        if self.batch_size is None and self.recipe == "paper":
            self.batch_size = MAX_BATCH
        elif self.batch_size is None:
            self.batch_size = budget_batch_size(self.total_tokens)
        checks = {
            "total_tokens": (self.total_tokens >= 1, "an integer ≥ 1"),
            "batch_size": (self.batch_size >= 1, "an integer ≥ 1"),
            "recipe": (self.recipe in RECIPE_NAMES, "'budget' or 'paper'"),
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
            "lr_scales": (
                self.lr_scales is None or all(v >= 0 for v in self.lr_scales.values()),
                "a mapping of parameter names to multipliers ≥ 0",
            ),
            "grad_clip_norm": (self.grad_clip_norm is None or self.grad_clip_norm > 0, "> 0"),
            "dead_window": (self.dead_window is None or self.dead_window >= 1, "≥ 1 token"),
            "resample_every": (self.resample_every is None or self.resample_every >= 1, "≥ 1"),
            "log_every": (self.log_every >= 1, "≥ 1"),
            "matmul_dtype": (self.matmul_dtype in MATMUL_DTYPES, f"one of {MATMUL_DTYPES}"),
            "target_scaling": (
                self.target_scaling is None or 0 <= self.target_scaling <= 2,
                "a float in [0, 2] (0: plain MSE of the target)",
            ),
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
