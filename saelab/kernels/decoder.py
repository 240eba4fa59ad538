"""Decoder x̂ = f·W_dec + b_dec for codes f stored as values on a sparse pattern."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.kernels.pattern import SparsePattern


class SparseDecoder(torch.autograd.Function):
    """x̂ = f·W_dec (+ b_dec) reading only the active rows of W_dec (SPEC §2 "Common").

    Backward: ∂f = (g·W_decᵀ) sampled at the pattern, ∂W_dec = fᵀ·g (only active rows are
    non-zero), ∂b_dec = Σ_tokens g.
    """

    @staticmethod
    def forward(
        ctx, values: Tensor, W_dec: Tensor, b_dec: Tensor | None, pattern: SparsePattern
    ) -> Tensor:
        ctx.save_for_backward(values, W_dec)
        ctx.pattern = pattern
        ctx.has_bias = b_dec is not None
        out = pattern.bag_sum(W_dec, values.to(W_dec.dtype))
        return out + b_dec if b_dec is not None else out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        values, W_dec = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad = grad.to(W_dec.dtype).contiguous()
        grad_v = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            zeros = pattern.csr(torch.zeros_like(values, dtype=W_dec.dtype))
            grad_v = torch.sparse.sampled_addmm(zeros, grad, W_dec.T, beta=0.0).values()
            grad_v = grad_v.to(values.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = pattern.bag_sum_t(grad, values.to(W_dec.dtype))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_v, grad_w, grad_b, None


def sparse_decode(
    values: Tensor, W_dec: Tensor, b_dec: Tensor | None, pattern: SparsePattern
) -> Tensor:
    """x̂ (B, d_in) from code values on the pattern; b_dec=None decodes without the bias."""
    return SparseDecoder.apply(values, W_dec, b_dec, pattern)
