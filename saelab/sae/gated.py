"""Gated SAE (SPEC §2.3; Rajamanoharan et al. 2024a).

Two variants (option gated_variant): "unit-norm", the original paper's (unit-norm decoder rows,
unweighted gate penalty), and "ri-l1", the JumpReLU paper's baseline (penalty weighted by ‖d_i‖,
no constraint). Under "ri-l1" the penalty shrinks ‖d_i‖, the frozen-decoder aux loss opens
the gates to make up for it and the wider gates shrink ‖d_i‖ faster: on a toy dictionary
(1M tokens) the decoder norms fell to ~1e-4 and L0 rose with λ (all 640 latents at λ = 0.1),
whereas "unit-norm" has L0 falling in λ and recovers the dictionary (tests/sae/test_gated.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saelab.sae.base import SAE, TrainOutput
from saelab.sae.common import squared_error
from saelab.sae.registry import register


@register
class GatedSAE(SAE):
    """f = H(π_gate) ⊙ ReLU(π_mag), W_mag = W_gate ⊙ exp(r_mag); W_enc is the gate matrix."""

    architecture = "gated"
    options = (
        "gated_variant",
        "b_dec_init",
        "encoder_init",
        "apply_b_dec_to_input",
        "normalization_constant",
    )
    encoder_offsets = ("b_gate", "b_mag")

    def _init_encoder(self, dtype: torch.dtype) -> None:
        n = self.cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(self.cfg.d_in, n, dtype=dtype))
        self.b_gate = nn.Parameter(torch.zeros(n, dtype=dtype))
        self.r_mag = nn.Parameter(torch.zeros(n, dtype=dtype))
        self.b_mag = nn.Parameter(torch.zeros(n, dtype=dtype))

    @property
    def b_enc(self) -> Tensor:
        """The gate bias plays the role of b_enc (SAELens naming: b_gate)."""
        return self.b_gate

    @property
    def unit_norm_decoder(self) -> bool:
        return self.cfg.gated_variant == "unit-norm"

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.r_mag.zero_()
            self.b_mag.zero_()

    def latent_parameters(self) -> list[tuple[nn.Parameter, int]]:
        """The gate and magnitude encoders, their biases and the decoder rows."""
        return [
            (self.W_enc, 1),
            (self.b_gate, 0),
            (self.r_mag, 0),
            (self.b_mag, 0),
            (self.W_dec, 0),
        ]

    def gate_and_magnitude(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(π_gate, π_mag) with the weight sharing W_mag = W_gate ⊙ exp(r_mag).

        W_mag scales W_gate's columns, so s·W_mag = (s·W_gate) ⊙ exp(r_mag): one matmul.
        """
        shared = self.sae_input(x) @ self.W_enc
        return shared + self.b_gate, shared * self.r_mag.exp() + self.b_mag

    def pre_acts(self, x: Tensor) -> Tensor:
        return self.gate_and_magnitude(x)[1]

    def encode(self, x: Tensor) -> Tensor:
        gate, mag = self.gate_and_magnitude(x)
        return (gate > 0).to(mag.dtype) * mag.relu()

    def train_forward(
        self,
        x: Tensor,
        sparsity_coefficient: float,
        dead_mask: Tensor | None = None,
        target: Tensor | None = None,
    ) -> TrainOutput:
        y = self.split_target(x, target)
        gate, mag = self.gate_and_magnitude(x)
        f = (gate > 0).to(mag.dtype) * mag.relu()
        x_hat = self.with_skip(self.decode(f), x)
        gate_acts = gate.relu()
        if not self.unit_norm_decoder:
            gate_acts = gate_acts * self.W_dec.norm(dim=1)
        # The auxiliary loss trains the gate only: everything else enters it frozen.
        x_hat_frozen = gate.relu() @ self.W_dec.detach() + self.b_dec.detach()
        if self.cfg.skip_connection:
            x_hat_frozen = x_hat_frozen + x.to(self.W_skip.dtype) @ self.W_skip.detach().T
        terms = {
            "mse_loss": squared_error(y, x_hat),
            "sparsity_loss": sparsity_coefficient * gate_acts.sum(-1).mean(),
            "aux_loss": squared_error(y, x_hat_frozen),
        }
        return TrainOutput(sum(terms.values()), terms, f, x_hat)

    def _fold_b_dec_into_encoder(self) -> None:
        self.b_mag -= self.b_dec @ (self.W_enc * self.r_mag.exp())
        self.b_gate -= self.b_dec @ self.W_enc

    def _scale_encoder(self, s: float) -> None:
        """Scale W_gate, b_gate and b_mag by s: π_gate and π_mag scale by s, so f does (§2.0)."""
        self.W_enc *= s
        self.b_gate *= s
        self.b_mag *= s

    def _scale_encoder_offsets(self, c: float) -> None:
        self.b_gate *= c
        self.b_mag *= c

    def jumprelu_state(self) -> dict[str, Tensor]:
        """Equivalent JumpReLU weights: W_mag, b_mag and θ = max(b_mag − exp(r_mag)⊙b_gate, 0)."""
        theta = (self.b_mag - self.r_mag.exp() * self.b_gate).clamp_min(0.0)
        return {
            "W_enc": (self.W_enc * self.r_mag.exp()).detach().clone(),
            "b_enc": self.b_mag.detach().clone(),
            "threshold": theta.detach().clone(),
            "W_dec": self.W_dec.detach().clone(),
            "b_dec": self.b_dec.detach().clone(),
        }
