"""BatchTopK SAE (SPEC §2.2; Bussmann et al. 2024): top k·B activations across the batch."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.kernels import SparsePattern, batch_topk_codes
from saelab.sae.common import threshold_mask
from saelab.sae.registry import register
from saelab.sae.topk import TopKSAE

THRESHOLD_MOMENTUM = 0.01


@register
class BatchTopKSAE(TopKSAE):
    """Trains with batch-level TopK; infers with one global threshold θ, so it saves as JumpReLU."""

    architecture = "batchtopk"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        # θ < 0 means "not estimated yet": encode falls back to BatchTopK on its input.
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.threshold.fill_(-1.0)

    def batch_topk(self, pre: Tensor) -> Tensor:
        """Keep the k·B largest entries of ReLU(π) across the B tokens of the batch."""
        flat = pre.relu().reshape(-1, pre.shape[-1])
        kept = torch.zeros_like(flat).flatten()
        top, idx = flat.flatten().topk(self.cfg.k * flat.shape[0], sorted=False)
        return kept.scatter_(0, idx, top).reshape(pre.shape)

    def activation(self, pre: Tensor) -> Tensor:
        if self.threshold < 0:
            return self.batch_topk(pre)
        return threshold_mask(pre, self.threshold)

    def activation_(self, pre: Tensor) -> Tensor:
        if self.threshold < 0:
            return self.batch_topk(pre)
        return threshold_mask(pre, self.threshold, in_place=True)

    def train_activation(self, pre: Tensor) -> Tensor:
        f = self.batch_topk(pre)
        self._update_threshold(f)
        return f

    def sparse_train_codes(
        self, sae_in: Tensor, pre: Tensor, b_dec: Tensor | None
    ) -> tuple[SparsePattern, Tensor]:
        pattern, values = batch_topk_codes(sae_in, pre, self.cfg.k, self.W_enc, self.b_enc, b_dec)
        self._update_threshold(values)
        return pattern, values

    @torch.no_grad()
    def _update_threshold(self, selected: Tensor) -> None:
        """θ ← running average of the smallest selected activation (SPEC §2.2)."""
        selected = selected[selected > 0]
        if selected.numel():
            smallest = selected.min().float()
            if self.threshold < 0:
                self.threshold.copy_(smallest)
            else:
                self.threshold.lerp_(smallest, THRESHOLD_MOMENTUM)

    def _scale_encoder_offsets(self, c: float) -> None:
        super()._scale_encoder_offsets(c)
        if self.threshold >= 0:
            self.threshold *= c

    def export_state(self):
        """Saved as a JumpReLU SAE with θ_i = θ for every latent (SPEC §2.2)."""
        state = {k: v for k, v in self.state_dict().items() if k != "threshold"}
        theta = self.threshold.clamp_min(0.0)
        state["threshold"] = theta.expand(self.cfg.d_sae).clone().to(self.W_dec.dtype)
        return "jumprelu", state, {}
