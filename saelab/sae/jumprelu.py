"""JumpReLU SAE (SPEC §2.4; Rajamanoharan et al. 2024b, the Gemma Scope recipe)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saelab.kernels import (
    SparseCodes,
    SparsePattern,
    dense_pre_acts,
    dense_pre_acts_with_grad,
    jumprelu_window,
    kernel_options,
    matmul_autocast,
    maybe_compiled,
    scratch,
    sparse_decode,
    sparse_pre_acts,
    take,
    use_sparse,
)
from saelab.sae.base import SAE, TrainOutput
from saelab.sae.common import squared_error, threshold_mask
from saelab.sae.registry import register

MIN_THRESHOLD = 1e-6


def _rectangle(u: Tensor) -> Tensor:
    """K(u) = 1 if −1/2 < u < 1/2 else 0 (SPEC notation)."""
    return (u.abs() < 0.5).to(u.dtype)


def _sum_to_latents(t: Tensor) -> Tensor:
    """Sum a (..., d_sae) tensor over all leading (batch) dims: θ-gradients sum over the batch."""
    return t.reshape(-1, t.shape[-1]).sum(0)


class JumpReLUFunction(torch.autograd.Function):
    """JumpReLU_θ(z) = z·H(z − θ) with ∂/∂z = H(z − θ), ð/ðθ = −(θ/ε)·K((z − θ)/ε) (SPEC §2.4)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * (z > theta).to(grad.dtype)
        kernel = _rectangle((z.to(theta.dtype) - theta) / eps)
        grad_theta = _sum_to_latents(-(theta / eps) * kernel * grad.to(theta.dtype))
        return grad_z, grad_theta, None


class StepFunction(torch.autograd.Function):
    """H(z − θ) with ∂/∂z = 0 and ð/ðθ = −(1/ε)·K((z − θ)/ε): the L0 term trains θ only."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = _rectangle((z.to(theta.dtype) - theta) / eps)
        return None, _sum_to_latents(-(1.0 / eps) * kernel * grad.to(theta.dtype)), None


@register
class JumpReLUSAE(SAE):
    """f = JumpReLU_θ(π) with a learned per-latent threshold θ > 0, kept in fp32."""

    architecture = "jumprelu"
    options = (
        "bandwidth",
        "init_threshold",
        "sparsity_loss",
        "tanh_scale",
        "pre_act_coefficient",
        "apply_b_dec_to_input",
        "normalization_constant",
    )

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        # SPEC §2.4: θ stays fp32 even when the rest is bf16 (a bf16 θ stops learning).
        dtype = torch.promote_types(self.W_dec.dtype, torch.float32)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), cfg.init_threshold, dtype=dtype))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.threshold.fill_(self.cfg.init_threshold)

    def latent_parameters(self) -> list[tuple[nn.Parameter, int]]:
        return [*super().latent_parameters(), (self.threshold, 0)]

    def activation(self, pre: Tensor) -> Tensor:
        """JumpReLU_θ(π) = π·H(π − θ)."""
        return threshold_mask(pre, self.threshold)

    def activation_(self, pre: Tensor) -> Tensor:
        return threshold_mask(pre, self.threshold, in_place=True)

    def train_forward(
        self, x: Tensor, sparsity_coefficient: float, dead_mask: Tensor | None = None
    ) -> TrainOutput:
        cfg = self.cfg
        if (
            kernel_options().mode != "dense"
            and cfg.sparsity_loss == "l0"
            and not (cfg.pre_act_coefficient > 0 and dead_mask is not None)
        ):
            return self._kernel_train_forward(x, sparsity_coefficient)
        return maybe_compiled(self._dense_train_forward)(x, sparsity_coefficient, dead_mask)

    def _dense_train_forward(
        self, x: Tensor, sparsity_coefficient: float, dead_mask: Tensor | None
    ) -> TrainOutput:
        """The objective with dense (tokens × latents) tensors: any sparsity loss, any L0."""
        cfg = self.cfg
        with matmul_autocast(x.device):
            pre = self.pre_acts(x)
            f = JumpReLUFunction.apply(pre, self.threshold, cfg.bandwidth)
            x_hat = self.decode(f)
        terms = {"mse_loss": squared_error(x, x_hat)}
        if cfg.sparsity_loss == "l0":
            l0 = StepFunction.apply(pre, self.threshold, cfg.bandwidth).sum(-1).mean()
            terms["sparsity_loss"] = sparsity_coefficient * l0
        else:
            # SPEC §2.4 "tanh" variant (Anthropic, Jan 2025).
            weighted = f * self.W_dec.norm(dim=1)
            terms["sparsity_loss"] = (
                sparsity_coefficient * torch.tanh(cfg.tanh_scale * weighted).sum(-1).mean()
            )
        if cfg.pre_act_coefficient > 0 and dead_mask is not None and bool(dead_mask.any()):
            # Pull dead latents' pre-activations up to their thresholds (SPEC §2.4 variant).
            gap = (self.threshold - pre).relu() * self.W_dec.norm(dim=1)
            terms["pre_act_loss"] = cfg.pre_act_coefficient * (gap * dead_mask).sum(-1).mean()
        return TrainOutput(sum(terms.values()), terms, f, x_hat)

    def _kernel_train_forward(self, x: Tensor, sparsity_coefficient: float) -> TrainOutput:
        """The L0 objective via saelab.kernels: π once without a graph, then sparse or dense.

        Only entries with π > θ − ε/2 (active or inside the kernel window) carry any gradient
        (SPEC §2.4), so the sparse path touches just those; "auto" measures their density.
        """
        cfg, theta = self.cfg, self.threshold
        x2 = x.reshape(-1, x.shape[-1]).to(self.W_dec.dtype)
        sae_in, b_dec = self.sparse_sae_input(x2)
        pre = dense_pre_acts(sae_in, self.W_enc, self.b_enc, owner=self)
        window = jumprelu_window(
            pre, theta, cfg.bandwidth, scratch(self, "window", pre.shape, torch.bool, pre.device)
        )
        density = float(torch.count_nonzero(window)) / window.numel()
        if kernel_options().mode == "sparse" or use_sparse(density):
            pattern = SparsePattern.from_mask(window)
            z = sparse_pre_acts(sae_in, self.W_enc, self.b_enc, pre, pattern, b_dec)
            theta_j = theta[pattern.cols]
            values = JumpReLUFunction.apply(z, theta_j, cfg.bandwidth)
            x_hat = sparse_decode(values, self.W_dec, self.b_dec, pattern)
            l0 = StepFunction.apply(z, theta_j, cfg.bandwidth).sum() / x2.shape[0]
            codes = SparseCodes(pattern, values)
        elif kernel_options().compile:
            return maybe_compiled(self._dense_train_forward)(x, sparsity_coefficient, None)
        else:
            take(self, "pre")  # π now lives in the autograd graph, so it must not be reused
            z = dense_pre_acts_with_grad(self.sae_input(x2), self.W_enc, self.b_enc, pre)
            codes = JumpReLUFunction.apply(z, theta, cfg.bandwidth)
            with matmul_autocast(x.device):
                x_hat = self.decode(codes)
            l0 = StepFunction.apply(z, theta, cfg.bandwidth).sum(-1).mean()
        terms = {
            "mse_loss": squared_error(x2, x_hat),
            "sparsity_loss": sparsity_coefficient * l0,
        }
        return TrainOutput(sum(terms.values()), terms, codes, x_hat.reshape(x.shape))

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        self.threshold.clamp_(min=MIN_THRESHOLD)

    def _scale_encoder_offsets(self, c: float) -> None:
        super()._scale_encoder_offsets(c)
        self.threshold *= c
