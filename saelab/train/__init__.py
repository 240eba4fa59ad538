"""Training: the lockstep loop, schedules, dead-latent tracking, resampling."""

from saelab.train.config import RECIPES, TrainConfig
from saelab.train.trainer import SAETrainer, normalization_constant, train

__all__ = ["RECIPES", "SAETrainer", "TrainConfig", "normalization_constant", "train"]
