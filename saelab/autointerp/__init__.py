"""Automated interpretation: LLM explanations of latents, scored by detection and fuzzing.

Names are imported on first use (saelab.lazy), so importing a submodule (the CLI) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saelab.lazy import lazy_package

if TYPE_CHECKING:
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

lazy_package(
    __name__,
    {
        "AutointerpAborted": "saelab.autointerp.run",
        "AutointerpConfig": "saelab.autointerp.run",
        "LLMError": "saelab.autointerp.client",
        "LLMUnavailable": "saelab.autointerp.client",
        "OpenAIBackend": "saelab.autointerp.client",
        "TransformersBackend": "saelab.autointerp.client",
        "balanced_accuracy": "saelab.autointerp.scorers",
        "make_backend": "saelab.autointerp.client",
        "run_autointerp": "saelab.autointerp.run",
    },
)
