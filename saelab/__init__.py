"""saelab: train, evaluate and interpret sparse autoencoders on language-model activations."""

from saelab.evals.metrics import evaluate
from saelab.formats.load import load_sae
from saelab.lm import load_model
from saelab.sae import SAE, SAEConfig, create_sae
from saelab.train import TrainConfig, train

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "SAEConfig",
    "TrainConfig",
    "__version__",
    "create_sae",
    "evaluate",
    "load_model",
    "load_sae",
    "train",
]
