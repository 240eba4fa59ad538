"""Sparse training forwards for TopK, BatchTopK and JumpReLU codes (SPEC §2.2, §2.4)."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.kernels.decoder import sparse_decode
from saelab.kernels.encoder import sparse_pre_acts
from saelab.kernels.pattern import SparsePattern


def topk_codes(
    sae_in: Tensor, pre: Tensor, k: int, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None = None
) -> tuple[SparsePattern, Tensor]:
    """TopK_k(ReLU(π)) per token as (pattern, values) (SPEC §2.2).

    Selecting on π rather than ReLU(π) gives the same codes and gradients (entries ≤ 0 become 0
    either way) without a (B, n) copy.
    """
    idx = pre.topk(k, dim=-1, sorted=False).indices
    pattern = SparsePattern.from_topk(idx, pre.shape[-1])
    return pattern, sparse_pre_acts(sae_in, W_enc, b_enc, pre, pattern, b_dec).relu()


def batch_topk_codes(
    sae_in: Tensor, pre: Tensor, k: int, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None = None
) -> tuple[SparsePattern, Tensor]:
    """The k·B largest entries of ReLU(π) across the batch as (pattern, values) (SPEC §2.2).

    Selected on π directly, as in topk_codes: the same codes and gradients without a copy.
    """
    flat = pre.reshape(-1).topk(k * pre.shape[0], sorted=False).indices
    pattern = SparsePattern.from_flat(flat, tuple(pre.shape))
    return pattern, sparse_pre_acts(sae_in, W_enc, b_enc, pre, pattern, b_dec).relu()


def jumprelu_window(
    pre: Tensor, theta: Tensor, bandwidth: float, out: Tensor | None = None
) -> Tensor:
    """A superset of the entries with a non-zero JumpReLU gradient, in one pass: π > θ − ε.

    Only active entries (π > θ) and those in the kernel window |π − θ| < ε/2 carry a value or
    a gradient (SPEC §2.4); the margin of a full ε keeps rounding at the window's edge inside,
    and the extra entries contribute exact zeros.
    """
    return torch.gt(pre, (theta - bandwidth).to(pre.dtype), out=out)


def sparse_aux_k_loss(
    e: Tensor,
    sae_in: Tensor,
    pre: Tensor,
    dead_mask: Tensor,
    k_aux: int,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor | None = None,
) -> Tensor:
    """Normalised AuxK loss (SPEC §2.2) with z_aux = top k_aux dead pre-activations, sparse.

    e is stopgrad(x − x̂); ê = z_aux W_dec; L_aux = ‖e − ê‖² / ‖e − mean(e)‖².
    """
    k = min(k_aux, int(dead_mask.sum()))
    dead_pre = pre.masked_fill(~dead_mask, float("-inf"))
    pattern = SparsePattern.from_topk(dead_pre.topk(k, dim=-1, sorted=False).indices, pre.shape[1])
    z_aux = sparse_pre_acts(sae_in, W_enc, b_enc, pre, pattern, b_dec).relu()
    e_hat = sparse_decode(z_aux, W_dec, None, pattern)
    return (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
