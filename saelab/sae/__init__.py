"""SAE architectures, one file each, registered by name (SPEC §2)."""

from saelab.sae import batchtopk, gated, jumprelu, relu, topk  # noqa: F401  (registration)
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
