"""SAE architectures, one file each, registered by name (SPEC §2)."""

from saelab.sae import (  # noqa: F401  (registration)
    batchtopk,
    gated,
    jumprelu,
    matryoshka,
    matryoshka_jumprelu,
    relu,
    topk,
)
from saelab.sae.base import SAE, SAEConfig, TrainOutput
from saelab.sae.registry import architectures, build_sae, create_sae, sae_class

__all__ = [
    "SAE",
    "SAEConfig",
    "TrainOutput",
    "architectures",
    "build_sae",
    "create_sae",
    "sae_class",
]
