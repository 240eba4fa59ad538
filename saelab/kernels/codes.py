"""Sparse training forwards for TopK, BatchTopK and JumpReLU codes (SPEC §2.2, §2.4).

BatchTopK's selection and AuxK's normalisation are statistics of the global batch: under data
parallelism (saelab.train.distributed: a torch.distributed process group, each rank holding an
equal shard of the batch) they are computed over all ranks' tokens, with no collective at all
in a single process.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from saelab.kernels.decoder import sparse_decode
from saelab.kernels.encoder import dense_pre_acts_with_grad, sparse_pre_acts
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


def data_parallel_size() -> int:
    """How many ranks share the global batch: the process group's size, 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_across_ranks(value: Tensor) -> Tensor:
    """The mean of a (detached) per-rank scalar over the ranks of the data-parallel group."""
    ranks = data_parallel_size()
    if ranks == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / ranks


def batch_topk_select(scores: Tensor, k: int, across_ranks: bool) -> tuple[Tensor, Tensor, Tensor]:
    """BatchTopK's selection from (B, n) scores (SPEC §2.2): (flat indices, cut, smallest).

    An entry is selected iff its score is > cut, the (k·B_g + 1)-th largest score of the global
    batch of B_g tokens (this rank's B, or with across_ranks, every rank's B tokens). Without
    ties that is exactly the k·B_g largest entries; entries tied at the cut are all left out, so
    the selection depends only on the values, never on their order or on the split into ranks
    (ties are rare in fp32; under a bf16 matmul_dtype they leave L0 slightly below k).
    indices hold every selected entry of this rank's scores and possibly a few that are not
    (score ≤ cut); smallest is the smallest selected score > 0 over the global batch (+inf if
    none), the same on every rank. With across_ranks each rank takes its top k·B_g + 1 scores
    (every selected entry is among them), all-gathers them, reads the cut from the union and
    keeps its selected indices only (a host sync on GPU); one process runs no collective.
    """
    flat = scores.reshape(-1)
    ranks = data_parallel_size() if across_ranks else 1
    count = k * scores.shape[0] * ranks
    if count >= flat.numel() * ranks:  # k ≥ n: every entry is selected
        cut = flat.new_full((), float("-inf"))
        smallest = smallest_above(flat, cut).to(torch.promote_types(flat.dtype, torch.float32))
        if ranks > 1:
            dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        return torch.arange(flat.numel(), device=flat.device), cut, smallest
    candidates, idx = largest_entries(scores.reshape(-1, scores.shape[-1]), count + 1, k)
    if ranks == 1:
        cut = candidates.min()
        return idx, cut, smallest_above(candidates, cut)
    union = _all_gather(candidates, ranks)
    cut = union.kthvalue(union.numel() - count).values
    return idx[candidates > cut], cut, smallest_above(union, cut)


# BatchTopK first takes this many times k candidates per row (largest_entries).
ROW_CANDIDATES = 4


def largest_entries(scores: Tensor, count: int, k: int) -> tuple[Tensor, Tensor]:
    """The `count` largest entries of (B, n) scores as (values, flat indices), unordered.

    Each row's ROW_CANDIDATES·k largest first, then the `count` largest of those: ≈4× faster
    than one top-`count` over all B·n entries at 4,096 × 16,384. A row whose smallest candidate
    exceeds that result's smallest value may hold more of the largest entries ("crowded", e.g.
    a high-norm token): its whole row joins the candidates and the selection is redone, which
    is exact, as nothing left out of any other row can rank higher. One read-back decides.
    """
    b, n = scores.shape
    count = min(count, b * n)
    per_row = ROW_CANDIDATES * k
    if per_row >= n or per_row * b < count:
        return scores.reshape(-1).topk(count, sorted=False)
    rows = scores.topk(per_row, dim=-1, sorted=False)
    flat = rows.indices + torch.arange(b, device=scores.device).unsqueeze(1) * n
    values, pick = rows.values.reshape(-1).topk(count, sorted=False)
    crowded = rows.values.min(-1).values > values.min()
    if not bool(crowded.any()):
        return values, flat.reshape(-1)[pick]
    full = crowded.nonzero().squeeze(1)
    keep = ~crowded
    union = torch.cat([rows.values[keep].reshape(-1), scores[full].reshape(-1)])
    union_flat = torch.cat(
        [
            flat[keep].reshape(-1),
            (full.unsqueeze(1) * n + torch.arange(n, device=scores.device)).reshape(-1),
        ]
    )
    values, pick = union.topk(count, sorted=False)
    return values, union_flat[pick]


def smallest_above(values: Tensor, cut: Tensor) -> Tensor:
    """The smallest of values that is > cut and > 0, +inf if none."""
    return torch.where(values > cut.clamp_min(0), values, float("inf")).min()


def _all_gather(t: Tensor, ranks: int) -> Tensor:
    """Every rank's t (equal shapes) concatenated in rank order, in at least fp32 (exact)."""
    if ranks == 1:
        return t
    t = t.to(torch.promote_types(t.dtype, torch.float32)).contiguous()
    parts = [torch.empty_like(t) for _ in range(ranks)]
    dist.all_gather(parts, t)
    return torch.cat(parts)


def batch_topk_codes(
    sae_in: Tensor, pre: Tensor, k: int, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None = None
) -> tuple[SparsePattern, Tensor, Tensor]:
    """BatchTopK_k(ReLU(π)) over the global batch as (pattern, values, smallest) (SPEC §2.2).

    Selected on π directly, as in topk_codes: the same codes and gradients without a copy.
    The selection and smallest (for θ) are those of batch_topk_select with across_ranks.
    """
    flat, cut, smallest = batch_topk_select(pre, k, across_ranks=True)
    pattern = SparsePattern.from_flat(flat, tuple(pre.shape))
    z = sparse_pre_acts(sae_in, W_enc, b_enc, pre, pattern, b_dec)
    return pattern, z.relu().masked_fill(z <= cut, 0.0), smallest


def jumprelu_window(
    pre: Tensor, theta: Tensor, bandwidth: float, out: Tensor | None = None
) -> Tensor:
    """A superset of the entries with a non-zero JumpReLU gradient, in one pass.

    Only active entries (π > θ) and those in the kernel window |π − θ| < ε/2 carry a value or
    a gradient (SPEC §2.4), i.e. π > θ − ε/2. The cut sits below that edge by 5% of ε, and by
    at least 1e-6·|θ| (≈ 8 float32 ulps of θ), so the rounding of π − θ in the kernel cannot
    put a gradient-carrying entry outside; the extra entries contribute exact zeros.
    """
    margin = torch.clamp(theta.abs() * 1e-6, min=0.05 * bandwidth)
    return torch.gt(pre, (theta - 0.5 * bandwidth - margin).to(pre.dtype), out=out)


# AuxK works densely on the dead columns when its codes fill at least this fraction of them:
# (tokens × dead) matmuls then beat per-entry gathers. AuxK forward + backward at batch 4,096,
# d_in 640, k_aux 320 on a 2-core CPU, dense vs sparse: 500 dead 0.17 vs 0.31 s, 1,000 dead
# 0.21 vs 0.31 s, 3,000 dead 0.60 vs 0.46 s, 8,000 dead 1.54 vs 0.64 s.
AUX_DENSE_FRACTION = 0.2


class DeadColumns(NamedTuple):
    """The dead latents' indices and their columns of π, gathered once for every dead-latent
    term (AuxK, JumpReLU's pre-activation loss): a (tokens × dead) copy, not a masked full one."""

    cols: Tensor
    pre: Tensor

    @classmethod
    def of(cls, pre: Tensor, dead_mask: Tensor) -> DeadColumns:
        cols = dead_mask.nonzero().squeeze(1)
        return cls(cols, pre.detach().index_select(1, cols))


def sparse_aux_k_loss(
    e: Tensor,
    sae_in: Tensor,
    pre: Tensor,
    dead_columns: DeadColumns,
    k_aux: int,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor | None = None,
) -> Tensor:
    """Normalised AuxK loss (SPEC §2.2) with z_aux = top k_aux dead pre-activations.

    e is stopgrad(x − x̂); ê = z_aux W_dec; L_aux = ‖e − ê‖² / ‖e − mean(e)‖², the denominator
    over the global batch (aux_k_denominator). Only dead columns are read: sparse codes when
    k_aux is a small share of them, else dense (tokens × dead) products (AUX_DENSE_FRACTION).
    """
    dead, pre_dead = dead_columns
    k = min(k_aux, dead.numel())
    top = pre_dead.topk(k, dim=-1, sorted=False).indices
    if k >= AUX_DENSE_FRACTION * dead.numel():
        z = dense_pre_acts_with_grad(sae_in, W_enc[:, dead], b_enc[dead], pre_dead, b_dec)
        chosen = torch.zeros_like(pre_dead, dtype=torch.bool).scatter_(1, top, True)
        e_hat = z.masked_fill(~chosen, 0.0).relu() @ W_dec[dead]
    else:
        pattern = SparsePattern.from_topk(dead[top], pre.shape[1])
        z_aux = sparse_pre_acts(sae_in, W_enc, b_enc, pre, pattern, b_dec).relu()
        e_hat = sparse_decode(z_aux, W_dec, None, pattern)
    return (e - e_hat).pow(2).sum() / aux_k_denominator(e)


def aux_k_denominator(e: Tensor) -> Tensor:
    """‖e − mean(e)‖² summed over the global batch, divided by the number of ranks (SPEC §2.2).

    Each rank's numerator ‖e − ê‖² sums its own tokens and the trainer averages gradients over
    ranks, so this share makes the step that of Σ‖e − ê‖² / Σ‖e − mean(e)‖² over all tokens.
    Two all-reduces (Σe, then Σ‖e − mean‖²) keep the single-process formula's two passes.
    """
    ranks = data_parallel_size()
    if ranks == 1:
        return (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
    total = e.sum(0)
    dist.all_reduce(total)
    spread = (e - total / (e.shape[0] * ranks)).pow(2).sum()
    dist.all_reduce(spread)
    return spread.clamp_min(1e-12) / ranks
