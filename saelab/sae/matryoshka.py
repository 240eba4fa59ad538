"""Matryoshka SAE (SPEC §2.5; Bussmann et al. 2025, Nabeshima 2024): nested prefix losses.

Latents come in groups; prefix g holds the first m_g = Σ_{h≤g} group_sizes[h] latents and must
reconstruct x on its own, so general features stay in early latents instead of being absorbed
into specific ones. "matryoshka" takes BatchTopK's codes (SPEC §2.2); inference and files are
BatchTopK's too (one global θ, saved as JumpReLU, so SAELens loads it). The nesting below is
shared with "matryoshka_jumprelu" (saelab/sae/matryoshka_jumprelu.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.kernels import (
    DeadColumns,
    SparseCodes,
    SparsePattern,
    matmul_autocast,
    sparse_aux_k_loss,
    sparse_decode,
)
from saelab.sae.base import TrainOutput
from saelab.sae.batchtopk import BatchTopKSAE
from saelab.sae.common import aux_k_loss, squared_error
from saelab.sae.registry import register

# Default prefixes when group_sizes is not given: n/16, n/8, n/4, n/2 and n latents.
DEFAULT_GROUPS = 5


def default_group_sizes(d_sae: int, groups: int = DEFAULT_GROUPS) -> list[int]:
    """Group sizes whose prefixes double up to d_sae: [n/16, n/16, n/8, n/4, n/2] for 5 groups
    (fewer groups when d_sae is too small to give each at least one latent)."""
    while groups > 1 and d_sae >> (groups - 1) < 1:
        groups -= 1
    ends = [max(1, d_sae >> (groups - 1 - g)) for g in range(groups - 1)] + [d_sae]
    return [end - start for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def prefix_ends(cfg) -> Tensor:
    """Cumulative group ends m_1 … m_G (setting the default group_sizes when none are given)."""
    if cfg.group_sizes is None:
        cfg.group_sizes = default_group_sizes(cfg.d_sae)
    return torch.tensor(cfg.group_sizes).cumsum(0)


def group_partials(codes: Tensor | SparseCodes, W_dec: Tensor, ends: Tensor) -> Tensor:
    """(B, G, d_out): each group's f_group W_dec[group] from one code, dense or sparse.

    Sparse: entries are sorted by token, then latent; groups are contiguous latent ranges, so
    the (token, group) bags are contiguous too and one sparse decode gives every partial sum.
    """
    groups = len(ends)
    if isinstance(codes, Tensor):
        starts = [0, *ends[:-1].tolist()]
        blocks = zip(starts, ends.tolist(), strict=True)
        return torch.stack([codes[:, a:b] @ W_dec[a:b] for a, b in blocks], dim=1)
    pattern = codes.pattern
    group = torch.bucketize(pattern.cols, ends[:-1], right=True)
    tokens = pattern.shape[0]
    bags = SparsePattern.from_coo(
        pattern.rows * groups + group, pattern.cols, (tokens * groups, pattern.shape[1])
    )
    return sparse_decode(codes.values, W_dec, None, bags).reshape(tokens, groups, -1)


def nested_loss(sae, y2: Tensor, x2: Tensor, codes: Tensor | SparseCodes) -> tuple[Tensor, Tensor]:
    """((1/G)·Σ_g ‖y − (prefix g's partial sum + b_dec [+ x W_skipᵀ])‖², the full prefix x̂),
    prefixes by cumulative sum over the group partials."""
    partials = group_partials(codes, sae.W_dec, sae.prefix_ends)
    prefixes = partials.to(sae.W_dec.dtype).cumsum(1) + sae.b_dec  # (B, G, d_out)
    if sae.cfg.skip_connection:  # a skip transcoder's x W_skipᵀ belongs to every prefix
        prefixes = prefixes + (x2 @ sae.W_skip.T).unsqueeze(1)
    groups = prefixes.shape[1]
    loss = sum(squared_error(y2, prefixes[:, g]) for g in range(groups)) / groups
    return loss, prefixes[:, -1]


@register
class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK codes; loss (1/G)·Σ_g ‖x − (f_{1:m_g} W_dec[1:m_g] + b_dec)‖² + α·L_aux."""

    architecture = "matryoshka"
    options = (*BatchTopKSAE.options, "group_sizes")

    def __init__(self, cfg) -> None:
        ends = prefix_ends(cfg)
        super().__init__(cfg)
        self.register_buffer("prefix_ends", ends, persistent=False)

    def train_forward(
        self,
        x: Tensor,
        sparsity_coefficient: float,
        dead_mask: Tensor | None = None,
        target: Tensor | None = None,
    ) -> TrainOutput:
        """The nested loss from one code: each group decoded once, prefixes by cumulative sum."""
        y = self.split_target(x, target)
        x2 = x.reshape(-1, x.shape[-1]).to(self.W_dec.dtype)
        y2 = y.reshape(-1, y.shape[-1]).to(self.W_dec.dtype)
        dead = dead_mask if dead_mask is not None and bool(dead_mask.any()) else None
        if self.kernels.sparse_at(self.cfg.k / self.cfg.d_sae):
            sae_in, b_dec = self.sparse_sae_input(x2)
            pre = self.dense_pre_acts(sae_in)
            codes = SparseCodes(*self.sparse_train_codes(sae_in, pre, b_dec))

            def aux(e: Tensor) -> Tensor:
                columns = DeadColumns.of(pre, dead)
                return sparse_aux_k_loss(
                    e, sae_in, pre, columns, self.k_aux, self.W_enc, self.b_enc, self.W_dec, b_dec
                )

        else:
            with matmul_autocast(x.device, self.kernels.matmul_dtype):
                pre = self.pre_acts(x2)
                codes = self.train_activation(pre)

            def aux(e: Tensor) -> Tensor:
                return aux_k_loss(y2, y2 - e, pre, self.W_dec, dead, self.k_aux)

        nested, x_hat = nested_loss(self, y2, x2, codes)
        terms = {"mse_loss": nested}
        if dead is not None:
            terms["aux_loss"] = self.cfg.aux_coefficient * aux((y2 - x_hat).detach())
        return TrainOutput(sum(terms.values()), terms, codes, x_hat.reshape(y.shape))
