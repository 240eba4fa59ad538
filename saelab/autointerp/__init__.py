"""Automated interpretation: LLM explanations of latents, scored by detection and fuzzing."""

from saelab.autointerp.client import (
    LLMError,
    LLMUnavailable,
    OpenAIBackend,
    TransformersBackend,
    make_backend,
)
from saelab.autointerp.run import AutointerpAborted, AutointerpConfig, run_autointerp
from saelab.autointerp.scorers import balanced_accuracy

__all__ = [
    "AutointerpAborted",
    "AutointerpConfig",
    "LLMError",
    "LLMUnavailable",
    "OpenAIBackend",
    "TransformersBackend",
    "balanced_accuracy",
    "make_backend",
    "run_autointerp",
]
