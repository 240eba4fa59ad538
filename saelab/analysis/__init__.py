"""Feature analysis: one bounded streaming pass → features.sqlite, figures, Neuronpedia export."""

from saelab.analysis.accumulator import AnalysisConfig, FeatureAccumulator
from saelab.analysis.database import FeatureDB
from saelab.analysis.logit_lens import logit_lens, model_logit_lens
from saelab.analysis.neighbours import decoder_neighbours
from saelab.analysis.stream import analyze_stream

__all__ = [
    "AnalysisConfig",
    "FeatureAccumulator",
    "FeatureDB",
    "analyze_stream",
    "decoder_neighbours",
    "logit_lens",
    "model_logit_lens",
]
