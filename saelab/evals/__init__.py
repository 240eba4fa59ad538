"""Evaluation: SPEC §3 tensor metrics and spliced-LM metrics.

Names are imported on first use (saelab.lazy), so importing a submodule (the CLI) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saelab.lazy import lazy_package

if TYPE_CHECKING:
    from saelab.evals.metrics import MetricsAccumulator, evaluate
    from saelab.evals.spliced import SplicedEvaluator, evaluate_spliced

__all__ = [
    "MetricsAccumulator",
    "SplicedEvaluator",
    "evaluate",
    "evaluate_spliced",
]

lazy_package(
    __name__,
    {
        "MetricsAccumulator": "saelab.evals.metrics",
        "SplicedEvaluator": "saelab.evals.spliced",
        "evaluate": "saelab.evals.metrics",
        "evaluate_spliced": "saelab.evals.spliced",
    },
)
