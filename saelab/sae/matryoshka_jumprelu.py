"""Matryoshka SAE with JumpReLU codes (SPEC §2.5 with §2.4): "matryoshka_jumprelu".

The nested prefix loss of "matryoshka" on the codes of a JumpReLU SAE with a target L0: θ per
latent (a specific latent can stay quiet where a general one fires), trained by the STE through
every prefix term. Everything else — sparsity losses, dead-latent terms, the sparse kernels,
inference and files (plain JumpReLU, so SAELens loads it) — is JumpReLU's.
"""

from __future__ import annotations

from torch import Tensor

from saelab.kernels import SparseCodes
from saelab.sae.jumprelu import JumpReLUSAE
from saelab.sae.matryoshka import nested_loss, prefix_ends
from saelab.sae.registry import register


@register
class MatryoshkaJumpReLUSAE(JumpReLUSAE):
    """JumpReLU codes; loss (1/G)·Σ_g ‖x − (f_{1:m_g} W_dec[1:m_g] + b_dec)‖² + JumpReLU's terms."""

    architecture = "matryoshka_jumprelu"
    options = (*JumpReLUSAE.options, "group_sizes")

    def __init__(self, cfg) -> None:
        ends = prefix_ends(cfg)
        super().__init__(cfg)
        self.register_buffer("prefix_ends", ends, persistent=False)

    def reconstruction_loss(
        self, y: Tensor, x: Tensor, x_hat: Tensor, codes: Tensor | SparseCodes
    ) -> Tensor:
        return nested_loss(self, y, x, codes)[0]

    def export_state(self):
        """Saved as a JumpReLU SAE: the groups only shape training."""
        return "jumprelu", dict(self.state_dict()), {}
