"""ReLU SAE with the decoder-norm-weighted L1 penalty (SPEC §2.1; Anthropic, April 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.sae.base import SAE, TrainOutput
from saelab.sae.common import squared_error
from saelab.sae.registry import register

INIT_DECODER_NORM = 0.1


@register
class ReLUSAE(SAE):
    """f = ReLU(π); loss ‖x − x̂‖² + λ Σ_i f_i ‖d_i‖. Saved as SAELens "standard"."""

    architecture = "relu"
    options = (
        "unit_norm_decoder",
        "b_dec_init",
        "encoder_init",
        "apply_b_dec_to_input",
        "normalization_constant",
    )

    @property
    def unit_norm_decoder(self) -> bool:
        return self.cfg.unit_norm_decoder

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if not self.unit_norm_decoder:
            with torch.no_grad():
                self.W_dec *= INIT_DECODER_NORM
                self.W_enc.copy_(self.tied_encoder())

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu()

    def activation_(self, pre: Tensor) -> Tensor:
        return pre.relu_()

    def train_forward(
        self,
        x: Tensor,
        sparsity_coefficient: float,
        dead_mask: Tensor | None = None,
        target: Tensor | None = None,
    ) -> TrainOutput:
        y = self.split_target(x, target)
        f = self.encode(x)
        x_hat = self.with_skip(self.decode(f), x)
        l1 = (f * self.W_dec.norm(dim=1)).sum(-1).mean()
        terms = {"mse_loss": squared_error(y, x_hat), "sparsity_loss": sparsity_coefficient * l1}
        return TrainOutput(sum(terms.values()), terms, f, x_hat)

    def export_state(self):
        return "standard", dict(self.state_dict()), {}
