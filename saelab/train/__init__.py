"""Training: the lockstep loop, schedules, dead-latent tracking, resampling.

Names are imported on first use (saelab.lazy), so the CLI can import saelab.train.cli_options
without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saelab.lazy import lazy_package

if TYPE_CHECKING:
    from saelab.train.config import PAPER_RECIPES, TrainConfig, recipe_for
    from saelab.train.trainer import SAETrainer, normalization_constant, train

__all__ = [
    "PAPER_RECIPES",
    "SAETrainer",
    "TrainConfig",
    "normalization_constant",
    "recipe_for",
    "train",
]

lazy_package(
    __name__,
    {
        "PAPER_RECIPES": "saelab.train.config",
        "recipe_for": "saelab.train.config",
        "SAETrainer": "saelab.train.trainer",
        "TrainConfig": "saelab.train.config",
        "normalization_constant": "saelab.train.trainer",
        "train": "saelab.train.trainer",
    },
)
