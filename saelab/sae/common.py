"""Loss pieces and activations shared by several architectures (SPEC §2)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from saelab.kernels.codes import aux_k_denominator

# The data-dependent init (SPEC §2.0) scores its sample this many tokens at a time: at 16,384
# latents a whole 16k-token sample's π alone is 1 GiB, a 2k-token chunk's 128 MiB.
INIT_CHUNK_TOKENS = 2048


def squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """‖x − x̂‖² summed over dimensions, averaged over the batch (SPEC notation)."""
    return (x - x_hat).pow(2).sum(-1).mean()


def threshold_mask(pre: Tensor, threshold: Tensor, in_place: bool = False) -> Tensor:
    """π where π > threshold, else 0; in place (no graph) or as a new tensor."""
    if in_place:
        return pre.masked_fill_(pre <= threshold, 0.0)
    return pre * (pre > threshold).to(pre.dtype)


def topk_mask(values: Tensor, k: int) -> Tensor:
    """Keep the k largest entries of each row, zero the rest."""
    top, idx = values.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(values).scatter_(-1, idx, top)


def aux_k_loss(
    x: Tensor, x_hat: Tensor, pre: Tensor, W_dec: Tensor, dead_mask: Tensor, k_aux: int
) -> Tensor:
    """Normalised AuxK loss (SPEC §2.2): reconstruct the residual with top dead latents.

    e = stopgrad(x − x̂); ê = z_aux W_dec; L_aux = ‖e − ê‖² / ‖e − mean(e)‖², the denominator
    over the global batch (saelab.kernels.codes.aux_k_denominator).
    """
    k = min(k_aux, int(dead_mask.sum()))
    e = (x - x_hat).detach().reshape(-1, x.shape[-1])
    dead_pre = pre.reshape(-1, pre.shape[-1]).masked_fill(~dead_mask, float("-inf"))
    z_aux = topk_mask(dead_pre, k).relu()
    e_hat = z_aux @ W_dec
    return (e - e_hat).pow(2).sum() / aux_k_denominator(e)


def geometric_median(x: Tensor, iters: int = 50, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to the rows of x."""
    x = x.reshape(-1, x.shape[-1]).double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * y.norm().clamp_min(1e-12):
            return y_new
        y = y_new
    return y


def top_values(
    scores: Callable[[Tensor], Tensor], x: Tensor, count: int, chunk: int = INIT_CHUNK_TOKENS
) -> Tensor:
    """The `count` largest entries of scores(x) over all of x (unordered), scoring a chunk of
    rows at a time. Exact: each of them is among the `count` largest of its own chunk."""
    best: Tensor | None = None
    for part in x.split(chunk):
        values = scores(part).reshape(-1)
        if best is not None:
            values = torch.cat([best, values])
        best = values.topk(min(count, values.numel()), sorted=False).values
    assert best is not None, "top_values needs at least one row"
    return best
