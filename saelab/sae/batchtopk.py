"""BatchTopK SAE (SPEC §2.2; Bussmann et al. 2024): top k·B activations across the batch.

In training the batch is the global one: under data parallelism the selection and θ are those
of all ranks' tokens together (saelab.kernels.codes.batch_topk_select), identical on every rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.kernels import SparsePattern, batch_topk_codes
from saelab.kernels.codes import batch_topk_select, smallest_above
from saelab.sae.base import INIT_SAMPLE_TOKENS
from saelab.sae.common import threshold_mask, top_values
from saelab.sae.registry import register
from saelab.sae.topk import TopKSAE

THRESHOLD_MOMENTUM = 0.01
NOT_ESTIMATED = (
    "BatchTopK threshold not estimated yet: train the SAE or call "
    "initialize_from_data(sample) before saving"
)


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

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, target: Tensor | None = None) -> None:
        """SPEC §2.0 init, then θ from the sample (SPEC §2.2): the smallest of the k·N largest
        ReLU(π) over its N tokens, selected as in training, so θ holds before step 0.

        Every rank gets the same global sample, so θ agrees across ranks without a collective.
        """
        super().initialize_from_data(x, target)
        sample = x.reshape(-1, x.shape[-1])[:INIT_SAMPLE_TOKENS]
        count, entries = self.cfg.k * sample.shape[0], sample.shape[0] * self.cfg.d_sae
        # batch_topk_select's cut and smallest from the k·N + 1 largest, a chunk at a time.
        top = top_values(lambda part: self.pre_acts(part).relu(), sample, min(count + 1, entries))
        cut = top.min() if count < entries else top.new_tensor(float("-inf"))
        smallest = smallest_above(top, cut)
        if torch.isfinite(smallest):  # +inf: nothing fired, so training will set θ
            self.threshold.fill_(float(smallest))
            self.cfg.metadata.setdefault("init", {})["threshold"] = float(smallest)

    def batch_topk(self, pre: Tensor, across_ranks: bool = False) -> tuple[Tensor, Tensor]:
        """(f, smallest): the k·B largest entries of ReLU(π) across the B tokens of the batch
        (of every rank's tokens with across_ranks; ties at the cut are left out, see
        batch_topk_select), and the smallest selected activation, for θ."""
        flat = pre.relu().reshape(-1, pre.shape[-1])
        idx, cut, smallest = batch_topk_select(flat.detach(), self.cfg.k, across_ranks)
        top = flat.reshape(-1)[idx]
        kept = torch.zeros_like(flat).reshape(-1).scatter(0, idx, top.masked_fill(top <= cut, 0.0))
        return kept.reshape(pre.shape), smallest

    def activation(self, pre: Tensor) -> Tensor:
        if self.threshold < 0:
            return self.batch_topk(pre)[0]
        return threshold_mask(pre, self.threshold)

    def activation_(self, pre: Tensor) -> Tensor:
        if self.threshold < 0:
            return self.batch_topk(pre)[0]
        return threshold_mask(pre, self.threshold, in_place=True)

    def train_activation(self, pre: Tensor) -> Tensor:
        f, smallest = self.batch_topk(pre, across_ranks=True)
        self._update_threshold(smallest)
        return f

    def sparse_train_codes(
        self, sae_in: Tensor, pre: Tensor, b_dec: Tensor | None
    ) -> tuple[SparsePattern, Tensor]:
        pattern, values, smallest = batch_topk_codes(
            sae_in, pre, self.cfg.k, self.W_enc, self.b_enc, b_dec
        )
        self._update_threshold(smallest)
        return pattern, values

    @torch.no_grad()
    def _update_threshold(self, smallest: Tensor) -> None:
        """θ ← running average of the smallest selected activation (SPEC §2.2); no host sync.

        θ starts at the first smallest; a batch with nothing selected (+inf) leaves θ as is.
        """
        smallest = smallest.float()
        theta = self.threshold
        new = torch.where(theta < 0, smallest, torch.lerp(theta, smallest, THRESHOLD_MOMENTUM))
        theta.copy_(torch.where(torch.isfinite(smallest), new, theta))

    def _scale_encoder_offsets(self, c: float) -> None:
        super()._scale_encoder_offsets(c)
        if self.threshold >= 0:
            self.threshold *= c

    def export_state(self):
        """Saved as a JumpReLU SAE with θ_i = θ for every latent (SPEC §2.2); θ must be set."""
        if self.threshold < 0:
            raise ValueError(NOT_ESTIMATED)
        state = {k: v for k, v in self.state_dict().items() if k != "threshold"}
        theta = self.threshold.expand(self.cfg.d_sae).clone()
        state["threshold"] = theta.to(self.W_dec.dtype)
        return "jumprelu", state, {}
