"""Learning-rate and sparsity-coefficient schedules as pure functions of the step."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    """Warm-up from start·lr (cosine or linear), constant, then linear decay to 0 at the end."""

    lr: float
    total_steps: int
    warmup_steps: int = 0
    warmup: str = "cosine"
    start: float = 0.1
    decay_steps: int = 0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            t = step / self.warmup_steps
            ramp = (1 - math.cos(math.pi * t)) / 2 if self.warmup == "cosine" else t
            return self.lr * (self.start + (1 - self.start) * ramp)
        decay_start = self.total_steps - self.decay_steps
        if self.decay_steps and step >= decay_start:
            return self.lr * (self.total_steps - step) / self.decay_steps
        return self.lr


@dataclass(frozen=True)
class SparsitySchedule:
    """λ warmed up linearly from 0 over the first warmup_steps, then constant."""

    coefficient: float
    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.coefficient * step / self.warmup_steps
        return self.coefficient
