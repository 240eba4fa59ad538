"""Evaluation: SPEC §3 tensor metrics and spliced-LM metrics."""

from saelab.evals.metrics import MetricsAccumulator, evaluate
from saelab.evals.spliced import SplicedEvaluator, evaluate_spliced

__all__ = ["MetricsAccumulator", "SplicedEvaluator", "evaluate", "evaluate_spliced"]
