"""Encoder pre-activations whose backward touches only a sparse pattern (grad W_enc = xᵀ·g)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from saelab.kernels.options import matmul_autocast
from saelab.kernels.pattern import SparsePattern


@torch.no_grad()
def dense_pre_acts(
    sae_in: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    matmul_dtype: torch.dtype | None = None,
    out: Tensor | None = None,
    scratch: Tensor | None = None,
) -> Tensor:
    """π = sae_in · W_enc + b_enc without a graph (SPEC §2 "Common"), the product in the matmul dtype.

    out (e.g. a Workspace buffer reused across steps) receives π when given. Under a matmul dtype
    π is what autocast gives (the low-precision product plus the fp32 bias); with out and
    scratch (a (rows, n) tensor of that dtype) it is formed scratch-rows at a time into out, so
    no full-size low-precision copy of π is ever held.
    """
    if matmul_dtype is None:
        return torch.addmm(b_enc, sae_in, W_enc, out=out)
    if out is None or scratch is None:
        with matmul_autocast(sae_in.device, matmul_dtype):
            return sae_in @ W_enc + b_enc
    x, W = sae_in.to(matmul_dtype), W_enc.to(matmul_dtype)
    rows = scratch.shape[0]
    for start in range(0, x.shape[0], rows):
        part = scratch[: min(rows, x.shape[0] - start)]
        torch.matmul(x[start : start + rows], W, out=part)
        torch.add(part, b_enc, out=out[start : start + len(part)])
    return out


class SparseEncoder(torch.autograd.Function):
    """π at the pattern's entries, taken from a precomputed dense π.

    Backward with g the gradient at those entries (SPEC §2: π = (x − b_dec) W_enc + b_enc):
    ∂W_enc = sae_inᵀ·g, ∂b_enc = Σ_tokens g, ∂sae_in = g·W_encᵀ — each over the nnz entries only.
    When b_dec is given, sae_in = x − b_dec with x constant: ∂b_dec = −W_enc·Σ_tokens g, which
    replaces the (tokens × d_in) ∂sae_in by a matrix-vector product.
    """

    @staticmethod
    def forward(
        ctx,
        sae_in: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        pre: Tensor,
        pattern: SparsePattern,
        b_dec: Tensor | None,
    ) -> Tensor:
        ctx.save_for_backward(sae_in, W_enc)
        ctx.pattern = pattern
        return pattern.gather(pre).to(W_enc.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        sae_in, W_enc = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad = grad.to(W_enc.dtype)
        grad_in = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_in = pattern.csr(grad) @ W_enc.T
        if ctx.needs_input_grad[1]:
            grad_w = _transposed(pattern.bag_sum_t(sae_in.to(W_enc.dtype), grad))

        def token_sum() -> Tensor:
            total = torch.zeros(pattern.shape[1], dtype=grad.dtype, device=grad.device)
            return total.index_add_(0, pattern.cols, grad)

        needs = ctx.needs_input_grad
        grad_b, grad_b_dec = _offset_grads(token_sum, W_enc, needs[2], needs[5])
        return grad_in, grad_w, grad_b, None, None, grad_b_dec


def _offset_grads(
    token_sum: Callable[[], Tensor], W_enc: Tensor, need_b_enc: bool, need_b_dec: bool
) -> tuple[Tensor | None, Tensor | None]:
    """(∂b_enc, ∂b_dec) from Σ_tokens g: ∂b_enc = Σ_t g, ∂b_dec = −W_enc·Σ_t g (sae_in = x − b_dec
    with x constant); the sum is taken only when either is needed."""
    if not (need_b_enc or need_b_dec):
        return None, None
    total = token_sum()
    return (total if need_b_enc else None), (-(W_enc @ total) if need_b_dec else None)


def _transposed(m: Tensor, block: int = 1024) -> Tensor:
    """m.T made contiguous a block of rows at a time: the blocks stay in cache, ≈3× faster on
    CPU than one strided copy (and the gradient then lands in W_enc's layout without a copy)."""
    out = m.new_empty(m.shape[1], m.shape[0])
    for i in range(0, m.shape[0], block):
        out[:, i : i + block].copy_(m[i : i + block].T)
    return out


def sparse_pre_acts(
    sae_in: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    pre: Tensor,
    pattern: SparsePattern,
    b_dec: Tensor | None = None,
) -> Tensor:
    """π at the pattern (values in row order), differentiable w.r.t. sae_in, W_enc and b_enc.

    Pass b_dec when sae_in = x − b_dec for a constant x (sae_in itself then without a graph).
    """
    return SparseEncoder.apply(sae_in, W_enc, b_enc, pre, pattern, b_dec)


class DenseEncoder(torch.autograd.Function):
    """A precomputed dense π with the dense backward (the fallback when codes are not sparse).

    Backward: ∂sae_in = g·W_encᵀ, ∂W_enc = sae_inᵀ·g, ∂b_enc = Σ_tokens g (SPEC §2 "Common").
    As in SparseEncoder, a given b_dec (sae_in = x − b_dec, x constant) gets ∂b_dec =
    −W_enc·Σ_tokens g, a matrix-vector product instead of the (tokens × d_in) ∂sae_in matmul.
    """

    @staticmethod
    def forward(
        ctx,
        sae_in: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        pre: Tensor,
        b_dec: Tensor | None,
        matmul_dtype: torch.dtype | None,
    ) -> Tensor:
        ctx.save_for_backward(sae_in, W_enc)
        ctx.matmul_dtype = matmul_dtype
        return pre.to(W_enc.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        sae_in, W_enc = ctx.saved_tensors
        grad = grad.to(W_enc.dtype)
        with matmul_autocast(grad.device, ctx.matmul_dtype):
            grad_in = grad @ W_enc.T if ctx.needs_input_grad[0] else None
            grad_w = sae_in.T @ grad if ctx.needs_input_grad[1] else None
        needs = ctx.needs_input_grad
        grad_b, grad_b_dec = _offset_grads(lambda: grad.sum(0), W_enc, needs[2], needs[4])
        return _cast(grad_in, W_enc), _cast(grad_w, W_enc), grad_b, None, grad_b_dec, None


def _cast(t: Tensor | None, like: Tensor) -> Tensor | None:
    return None if t is None else t.to(like.dtype)


def dense_pre_acts_with_grad(
    sae_in: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    pre: Tensor,
    b_dec: Tensor | None = None,
    matmul_dtype: torch.dtype | None = None,
) -> Tensor:
    """A precomputed π (from dense_pre_acts) reattached to the graph with the dense backward
    (its matmuls in matmul_dtype, like the forward's). Pass b_dec as for sparse_pre_acts."""
    return DenseEncoder.apply(sae_in, W_enc, b_enc, pre, b_dec, matmul_dtype)
