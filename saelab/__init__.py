"""saelab: train, evaluate and interpret sparse autoencoders on language-model activations.

The public API is imported on first use (saelab.lazy), so `import saelab` and the `saelab`
command start without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saelab.lazy import lazy_package

if TYPE_CHECKING:
    from saelab.evals.metrics import evaluate
    from saelab.formats.load import load_sae
    from saelab.interventions.attribution import attribute
    from saelab.lm import load_model
    from saelab.sae import SAE, SAEConfig, create_sae
    from saelab.train import TrainConfig, train

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "SAEConfig",
    "TrainConfig",
    "__version__",
    "attribute",
    "create_sae",
    "evaluate",
    "load_model",
    "load_sae",
    "train",
]

lazy_package(
    __name__,
    {
        "SAE": "saelab.sae",
        "SAEConfig": "saelab.sae",
        "TrainConfig": "saelab.train.config",
        "attribute": "saelab.interventions.attribution",
        "create_sae": "saelab.sae",
        "evaluate": "saelab.evals.metrics",
        "load_model": "saelab.lm.loading",
        "load_sae": "saelab.formats.load",
        "train": "saelab.train.trainer",
    },
)
