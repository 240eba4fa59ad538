"""Feature analysis: one bounded streaming pass → features.sqlite, figures, Neuronpedia export.

Names are imported on first use (saelab.lazy), so importing a submodule (the CLI) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saelab.lazy import lazy_package

if TYPE_CHECKING:
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

lazy_package(
    __name__,
    {
        "AnalysisConfig": "saelab.analysis.accumulator",
        "FeatureAccumulator": "saelab.analysis.accumulator",
        "FeatureDB": "saelab.analysis.database",
        "analyze_stream": "saelab.analysis.stream",
        "decoder_neighbours": "saelab.analysis.neighbours",
        "logit_lens": "saelab.analysis.logit_lens",
        "model_logit_lens": "saelab.analysis.logit_lens",
    },
)
