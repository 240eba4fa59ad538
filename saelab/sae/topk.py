"""TopK SAE with the AuxK loss on dead latents (SPEC §2.2; Gao et al., OpenAI 2024)."""

from __future__ import annotations

from torch import Tensor

from saelab.sae.base import SAE, TrainOutput
from saelab.sae.common import aux_k_loss, geometric_median, squared_error, topk_mask
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

    def initialize_from_data(self, x: Tensor) -> None:
        """b_dec = geometric median of a sample of inputs (SPEC §2.2 init)."""
        self.b_dec.data.copy_(geometric_median(x).to(self.b_dec.dtype))

    def activation(self, pre: Tensor) -> Tensor:
        """TopK_k(ReLU(π)) per token."""
        return topk_mask(pre.relu(), self.cfg.k)

    def encode(self, x: Tensor) -> Tensor:
        return self.activation(self.pre_acts(x))

    def train_forward(
        self, x: Tensor, sparsity_coefficient: float, dead_mask: Tensor | None = None
    ) -> TrainOutput:
        pre = self.pre_acts(x)
        f = self.train_activation(pre)
        x_hat = self.decode(f)
        terms = {"mse_loss": squared_error(x, x_hat)}
        if dead_mask is not None and bool(dead_mask.any()):
            aux = aux_k_loss(x, x_hat, pre, self.W_dec, dead_mask, self.k_aux)
            terms["aux_loss"] = self.cfg.aux_coefficient * aux
        return TrainOutput(sum(terms.values()), terms, f, x_hat)

    def train_activation(self, pre: Tensor) -> Tensor:
        """The activation used in training (per-token TopK here, batch-level in BatchTopK)."""
        return self.activation(pre)
