"""TopK SAE with the AuxK loss on dead latents (SPEC §2.2; Gao et al., OpenAI 2024)."""

from __future__ import annotations

from torch import Tensor

from saelab.kernels import (
    DeadColumns,
    SparseCodes,
    SparsePattern,
    matmul_autocast,
    sparse_aux_k_loss,
    sparse_decode,
    topk_codes,
)
from saelab.sae.base import SAE, TrainOutput
from saelab.sae.common import aux_k_loss, squared_error, topk_mask
from saelab.sae.registry import register

DEFAULT_K = 32


@register
class TopKSAE(SAE):
    """f = TopK_k(ReLU(π)); loss ‖x − x̂‖² + α·L_aux (AuxK, only when some latent is dead)."""

    architecture = "topk"
    options = (
        "k",
        "aux_k",
        "aux_coefficient",
        "b_dec_init",
        "encoder_init",
        "apply_b_dec_to_input",
        "normalization_constant",
    )

    def __init__(self, cfg) -> None:
        if cfg.k is None:
            cfg.k = min(DEFAULT_K, cfg.d_sae)
        super().__init__(cfg)

    @property
    def k_aux(self) -> int:
        """k_aux = d_in/2 unless configured (SPEC §2.2)."""
        return self.cfg.aux_k or max(1, self.cfg.d_in // 2)

    def activation(self, pre: Tensor) -> Tensor:
        """TopK_k(ReLU(π)) per token."""
        return topk_mask(pre.relu(), self.cfg.k)

    def activation_(self, pre: Tensor) -> Tensor:
        top, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return pre.zero_().scatter_(-1, idx, top.relu_())

    def train_forward(
        self,
        x: Tensor,
        sparsity_coefficient: float,
        dead_mask: Tensor | None = None,
        target: Tensor | None = None,
    ) -> TrainOutput:
        y = self.split_target(x, target)
        if self.kernels.sparse_at(self.cfg.k / self.cfg.d_sae):
            return self._sparse_train_forward(x, y, dead_mask)
        with matmul_autocast(x.device, self.kernels.matmul_dtype):
            pre = self.pre_acts(x)
            f = self.train_activation(pre)
            x_hat = self.with_skip(self.decode(f), x)
        terms = {"mse_loss": squared_error(y, x_hat)}
        if dead_mask is not None and bool(dead_mask.any()):
            aux = aux_k_loss(y, x_hat, pre, self.W_dec, dead_mask, self.k_aux)
            terms["aux_loss"] = self.cfg.aux_coefficient * aux
        return TrainOutput(sum(terms.values()), terms, f, x_hat)

    def train_activation(self, pre: Tensor) -> Tensor:
        """The activation used in training (per-token TopK here, batch-level in BatchTopK)."""
        return self.activation(pre)

    def sparse_train_codes(
        self, sae_in: Tensor, pre: Tensor, b_dec: Tensor | None
    ) -> tuple[SparsePattern, Tensor]:
        """The training activation as (pattern, values) for the sparse kernels."""
        return topk_codes(sae_in, pre, self.cfg.k, self.W_enc, self.b_enc, b_dec)

    def _sparse_train_forward(self, x: Tensor, y: Tensor, dead_mask: Tensor | None) -> TrainOutput:
        """Same objective as train_forward via saelab.kernels: only active latents are touched."""
        x2 = x.reshape(-1, x.shape[-1]).to(self.W_dec.dtype)
        y2 = y.reshape(-1, y.shape[-1]).to(self.W_dec.dtype)
        sae_in, b_dec = self.sparse_sae_input(x2)
        pre = self.dense_pre_acts(sae_in)
        pattern, values = self.sparse_train_codes(sae_in, pre, b_dec)
        x_hat = self.with_skip(sparse_decode(values, self.W_dec, self.b_dec, pattern), x2)
        terms = {"mse_loss": squared_error(y2, x_hat)}
        if dead_mask is not None and bool(dead_mask.any()):
            e = (y2 - x_hat).detach()
            dead = DeadColumns.of(pre, dead_mask)
            aux = sparse_aux_k_loss(
                e, sae_in, pre, dead, self.k_aux, self.W_enc, self.b_enc, self.W_dec, b_dec
            )
            terms["aux_loss"] = self.cfg.aux_coefficient * aux
        codes = SparseCodes(pattern, values)
        return TrainOutput(sum(terms.values()), terms, codes, x_hat.reshape(y.shape))
