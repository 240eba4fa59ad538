"""JumpReLU SAE (SPEC §2.4; Rajamanoharan et al. 2024b, the Gemma Scope recipe)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saelab.kernels import (
    DeadColumns,
    SparseCodes,
    SparsePattern,
    dense_pre_acts_with_grad,
    jumprelu_window,
    matmul_autocast,
    sparse_aux_k_loss,
    sparse_decode,
    sparse_pre_acts,
)
from saelab.kernels.codes import mean_across_ranks
from saelab.sae.base import PRE_SCRATCH_ROWS, SAE, TrainOutput
from saelab.sae.common import aux_k_loss, squared_error, threshold_mask, top_values
from saelab.sae.registry import register

MIN_THRESHOLD = 1e-6
# SPEC §2.4 recipe values, used when the data-dependent init is switched off.
PAPER_THRESHOLD = 0.001
PAPER_BANDWIDTH = 0.001
# Without a target L0 the data-dependent θ₀ aims at this many active latents (SPEC §2.0).
DEFAULT_TARGET_L0 = 32
# ε = this fraction of θ₀ and the dead latents' pre-activation loss weight: measured best at
# 500k tokens on gemma-3-270m (docs/jumprelu-training.md, "What the defaults are").
BANDWIDTH_FRACTION = 2.0
PRE_ACT_COEFFICIENT = 0.03


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


class WindowThreshold(torch.autograd.Function):
    """θ's gradients from a dense kernel window while the codes stay sparse (SPEC §2.4).

    Outputs x̂ unchanged and the STE firing frequencies p_j = Σ_t H(π_tj − θ_j)/B. Backward:
    ð/ðθ_j = −(θ_j/ε)·Σ_t K_tj·∂L/∂f_tj − (1/(εB))·Σ_t K_tj·∂L/∂p_j with K_tj = K((π_tj − θ_j)/ε)
    and ∂L/∂f = ∂L/∂x̂·W_decᵀ (plain reconstruction), so Σ_t K_tj·∂L/∂f_tj = ⟨W_dec[j], (Kᵀ·∂L/∂x̂)[j]⟩:
    one (latents × tokens)·(tokens × d_in) matmul, whose extra column of ones counts Σ_t K_tj.
    kernel is K as a 0/1 matrix in the matmul dtype (exact in bf16; the product is not).
    """

    @staticmethod
    def forward(
        ctx,
        x_hat: Tensor,
        theta: Tensor,
        W_dec: Tensor,
        active: Tensor,
        kernel: Tensor,
        bandwidth: float,
    ) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(theta, W_dec, kernel)
        ctx.bandwidth = bandwidth
        return x_hat.view_as(x_hat), active.to(theta.dtype) / kernel.shape[0]

    @staticmethod
    def backward(ctx, grad_x: Tensor, grad_p: Tensor) -> tuple[Tensor | None, ...]:
        theta, W_dec, kernel = ctx.saved_tensors
        rhs = torch.cat([grad_x, grad_x.new_ones(grad_x.shape[0], 1)], 1).to(kernel.dtype)
        sums = (kernel.T @ rhs).to(theta.dtype)
        in_window = (sums[:, :-1] * W_dec.to(theta.dtype)).sum(1)
        counts = sums[:, -1]
        eps, tokens = ctx.bandwidth, kernel.shape[0]
        grad_theta = -(theta / eps) * in_window - counts * grad_p.to(theta.dtype) / (eps * tokens)
        return grad_x, grad_theta, None, None, None, None


def kernel_window(
    pre: Tensor, theta: Tensor, bandwidth: float, out: Tensor, scratch: Tensor
) -> Tensor:
    """out = 1 where K((π − θ)/ε) ≠ 0 else 0, with _rectangle's arithmetic (both paths agree bit
    for bit), formed scratch-rows at a time: no full-size float temporary."""
    rows = scratch.shape[0]
    for start in range(0, pre.shape[0], rows):
        part = slice(start, start + rows)
        mask = scratch[: out[part].shape[0]]
        torch.lt(((pre[part].to(theta.dtype) - theta) / bandwidth).abs_(), 0.5, out=mask)
        out[part].copy_(mask)
    return out


@register
class JumpReLUSAE(SAE):
    """f = JumpReLU_θ(π) with a learned per-latent threshold θ > 0, kept in fp32.

    Sparsity loss (SPEC §2.4): "quadratic" λ·(L0/target − 1)² (default, target_l0 = 32),
    "l0" λ·L0 (the paper) or "tanh" λ·Σ tanh(c·f_i‖d_i‖). On latents the trainer marks dead,
    AuxK (aux_coefficient, SPEC §2.2) trains their encoder on the residual and the
    pre-activation loss (pre_act_coefficient) lowers their θ towards their pre-activations.
    """

    architecture = "jumprelu"
    options = (
        "bandwidth",
        "init_threshold",
        "sparsity_loss",
        "target_l0",
        "tanh_scale",
        "pre_act_coefficient",
        "max_frequency",
        "aux_k",
        "aux_coefficient",
        "b_dec_init",
        "encoder_init",
        "apply_b_dec_to_input",
        "normalization_constant",
    )
    encoder_offsets = ("b_enc", "threshold")

    def __init__(self, cfg) -> None:
        if cfg.sparsity_loss == "quadratic" and cfg.target_l0 is None:
            cfg.target_l0 = min(DEFAULT_TARGET_L0, cfg.d_sae)
        if cfg.pre_act_coefficient is None:
            cfg.pre_act_coefficient = PRE_ACT_COEFFICIENT
        super().__init__(cfg)
        # SPEC §2.4: θ stays fp32 even when the rest is bf16 (a bf16 θ stops learning).
        dtype = torch.promote_types(self.W_dec.dtype, torch.float32)
        theta = cfg.init_threshold or PAPER_THRESHOLD
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), theta, dtype=dtype))

    @property
    def bandwidth(self) -> float:
        """ε: the configured value, else the paper's until the data-dependent init sets it."""
        return self.cfg.bandwidth or PAPER_BANDWIDTH

    @property
    def k_aux(self) -> int:
        """Dead latents used by AuxK per token: d_in/2 unless configured (SPEC §2.2)."""
        return self.cfg.aux_k or max(1, self.cfg.d_in // 2)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.threshold.fill_(self.cfg.init_threshold or PAPER_THRESHOLD)

    def _init_thresholds(self, x: Tensor) -> dict[str, float]:
        """θ₀ = the pre-activation level above which the sample has target_l0 active latents."""
        if self.cfg.init_threshold is not None:
            return {"threshold": self.cfg.init_threshold}
        target = self.cfg.target_l0 or min(DEFAULT_TARGET_L0, self.cfg.d_sae)
        count = max(1, round(target * x.shape[0]))
        top = top_values(lambda part: self.pre_acts(part).float(), x, count)
        theta = max(float(top.min()), MIN_THRESHOLD)
        self.threshold.fill_(theta)
        return {"target_l0": target}

    def _scale_encoder(self, s: float) -> None:
        super()._scale_encoder(s)
        self.threshold *= s
        self.threshold.clamp_(min=MIN_THRESHOLD)

    def _after_scale(self, x: Tensor) -> dict[str, float]:
        theta = float(self.threshold.mean())
        if self.cfg.bandwidth is None:
            self.cfg.bandwidth = BANDWIDTH_FRACTION * theta
        return {"threshold": theta, "bandwidth": self.cfg.bandwidth}

    def latent_parameters(self) -> list[tuple[nn.Parameter, int]]:
        return [*super().latent_parameters(), (self.threshold, 0)]

    def activation(self, pre: Tensor) -> Tensor:
        """JumpReLU_θ(π) = π·H(π − θ)."""
        return threshold_mask(pre, self.threshold)

    def activation_(self, pre: Tensor) -> Tensor:
        return threshold_mask(pre, self.threshold, in_place=True)

    def sparsity_term(
        self, l0: Tensor, values: Tensor, norms: Tensor | None, lam: float, tokens: int
    ) -> Tensor:
        """λ times the configured sparsity loss (SPEC §2.4), from the STE L0 (mean over tokens)
        or, for tanh, from the active values with their decoder-row norms."""
        cfg = self.cfg
        if cfg.sparsity_loss == "quadratic":
            # Nonlinear in L0, so it is taken of the global batch's L0 under data parallelism:
            # value λ(L̄0/T − 1)², gradient 2λ(L̄0/T − 1)/T · ∂L0 (ranks' ∂L0 are averaged).
            mean = mean_across_ranks(l0.detach())
            slope = 2.0 * lam * (mean / cfg.target_l0 - 1.0) / cfg.target_l0
            return lam * (mean / cfg.target_l0 - 1.0).pow(2) + slope * (l0 - l0.detach())
        if cfg.sparsity_loss == "l0":
            return lam * l0
        scale = cfg.tanh_scale or 4.0 * cfg.d_in**0.5  # Anthropic's c = 4 in §1 units
        return lam * torch.tanh(scale * values * norms).sum() / tokens

    def frequency_loss(self, frequency: Tensor) -> Tensor:
        """Σ_i ReLU(p_i − max_frequency) over latents, p_i their STE firing frequency in the
        batch: raises the θ of latents that fire on too many tokens (taken of the global
        batch's p under data parallelism, like the quadratic loss)."""
        excess = (mean_across_ranks(frequency.detach()) - self.cfg.max_frequency).relu()
        over = (excess > 0).to(frequency.dtype)
        return excess.sum() + (over * (frequency - frequency.detach())).sum()

    def pre_act_loss(self, dead: DeadColumns) -> Tensor:
        """λ_P·Σ_dead ReLU(θ_i − π_i)·‖d_i‖ per token (SPEC §2.4), π without a graph.

        Given to θ only: with the π-gradient too, training diverged at 500k tokens
        (docs/jumprelu-training.md); AuxK gives dead latents their encoder gradient instead.
        """
        gap = (self.threshold[dead.cols] - dead.pre.to(self.threshold.dtype)).relu()
        norms = self.W_dec[dead.cols].norm(dim=1).detach().to(gap.dtype)
        return self.cfg.pre_act_coefficient * (gap * norms).sum() / dead.pre.shape[0]

    def train_forward(
        self,
        x: Tensor,
        sparsity_coefficient: float,
        dead_mask: Tensor | None = None,
        target: Tensor | None = None,
    ) -> TrainOutput:
        y = self.split_target(x, target)
        dead = dead_mask if dead_mask is not None and bool(dead_mask.any()) else None
        if self.kernels.mode != "dense":
            return self._kernel_train_forward(x, y, sparsity_coefficient, dead)
        return self._dense_objective()(x, y, sparsity_coefficient, dead)

    def _dense_objective(self):
        """_dense_train_forward, through torch.compile when the kernel options ask for it."""
        forward = self._dense_train_forward
        return self.workspace.compiled(forward) if self.kernels.compile else forward

    def reconstruction_loss(
        self, y: Tensor, x: Tensor, x_hat: Tensor, codes: Tensor | SparseCodes
    ) -> Tensor:
        """‖y − x̂‖² (SPEC §2.4); matryoshka_jumprelu nests it over prefixes of the codes."""
        return squared_error(y, x_hat)

    def _terms(
        self,
        y: Tensor,
        x: Tensor,
        x_hat: Tensor,
        codes: Tensor | SparseCodes,
        sparsity: Tensor,
        frequency,
        pre: Tensor,
        dead: Tensor | None,
        aux,
    ) -> dict[str, Tensor]:
        """The named loss terms; frequency() and aux(dead columns) are computed only when used."""
        terms = {
            "mse_loss": self.reconstruction_loss(y, x, x_hat, codes),
            "sparsity_loss": sparsity,
        }
        if self.cfg.max_frequency < 1:
            terms["frequency_loss"] = self.frequency_loss(frequency())
        dead_terms = self.cfg.aux_coefficient > 0 or self.cfg.pre_act_coefficient > 0
        if dead is None or not dead_terms:
            return terms
        columns = DeadColumns.of(pre, dead)
        if self.cfg.aux_coefficient > 0:
            terms["aux_loss"] = self.cfg.aux_coefficient * aux(columns)
        if self.cfg.pre_act_coefficient > 0:
            terms["pre_act_loss"] = self.pre_act_loss(columns)
        return terms

    def _dense_train_forward(
        self, x: Tensor, y: Tensor, sparsity_coefficient: float, dead: Tensor | None
    ) -> TrainOutput:
        """The objective with dense (tokens × latents) tensors: the reference for the kernels."""
        x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        with matmul_autocast(x.device, self.kernels.matmul_dtype):
            pre = self.pre_acts(x2)
            f = JumpReLUFunction.apply(pre, self.threshold, self.bandwidth)
            x_hat = self.with_skip(self.decode(f), x2)
        step = StepFunction.apply(pre, self.threshold, self.bandwidth)
        l0 = step.sum(-1).mean()
        norms = self.W_dec.norm(dim=1) if self.cfg.sparsity_loss == "tanh" else None
        sparsity = self.sparsity_term(l0, f, norms, sparsity_coefficient, x2.shape[0])
        terms = self._terms(
            y2,
            x2,
            x_hat,
            f,
            sparsity,
            lambda: step.mean(0),
            pre,
            dead,
            lambda _: aux_k_loss(y2, x_hat, pre, self.W_dec, dead, self.k_aux),
        )
        return TrainOutput(sum(terms.values()), terms, f, x_hat.reshape(y.shape))

    def _codes_sparse_in_dense_window(self, pre: Tensor, active: Tensor) -> bool:
        """Whether to train with sparse codes and θ's window taken densely (WindowThreshold):
        "auto" with codes π > θ (written into `active`) sparse enough, and ∂L/∂f = ∂L/∂x̂·W_decᵀ
        (plain reconstruction, no tanh term reading the codes)."""
        applies = (
            self.kernels.mode == "auto"
            and self.cfg.sparsity_loss != "tanh"
            and type(self).reconstruction_loss is JumpReLUSAE.reconstruction_loss
        )
        if not applies:
            return False
        return self.workspace.use_sparse(
            torch.gt(pre, self.threshold, out=active), self.kernels, "codes"
        )

    def _kernel_window(self, pre: Tensor) -> Tensor:
        """K((π − θ)/ε) as 0/1 in the matmul dtype, in this SAE's workspace buffer "kernel"."""
        dtype = self.kernels.matmul_dtype or self.threshold.dtype
        out = self.workspace.buffer("kernel", pre.shape, dtype, pre.device)
        rows = (min(pre.shape[0], PRE_SCRATCH_ROWS), pre.shape[1])
        scratch = self.workspace.buffer("kernel_scratch", rows, torch.bool, pre.device)
        return kernel_window(pre, self.threshold, self.bandwidth, out, scratch)

    def _kernel_train_forward(
        self, x: Tensor, y: Tensor, sparsity_coefficient: float, dead: Tensor | None
    ) -> TrainOutput:
        """The objective via saelab.kernels: π once without a graph, then sparse or dense.

        Only entries with π > θ − ε/2 (active or inside the kernel window) carry any gradient of
        the reconstruction and sparsity terms (SPEC §2.4), so the sparse path touches just
        those; "auto" weighs their density (Workspace.use_sparse). When the window is too dense
        but the codes are not (early in a run from the target-L0 init), the codes stay sparse and
        θ's window gradients are one dense matmul (WindowThreshold). Dead-latent terms read
        their own columns.
        """
        theta, eps, tanh = self.threshold, self.bandwidth, self.cfg.sparsity_loss == "tanh"
        x2 = x.reshape(-1, x.shape[-1]).to(self.W_dec.dtype)
        y2 = y.reshape(-1, y.shape[-1]).to(self.W_dec.dtype)
        sae_in, b_dec = self.sparse_sae_input(x2)
        pre = self.dense_pre_acts(sae_in)
        buffer = self.workspace.buffer("window", pre.shape, torch.bool, pre.device)
        window = jumprelu_window(pre, theta, eps, buffer)
        if self.workspace.use_sparse(window, self.kernels, "window"):
            pattern = SparsePattern.from_mask(window)
            z = sparse_pre_acts(sae_in, self.W_enc, self.b_enc, pre, pattern, b_dec)
            theta_j = theta[pattern.cols]
            values = JumpReLUFunction.apply(z, theta_j, eps)
            x_hat = self.with_skip(sparse_decode(values, self.W_dec, self.b_dec, pattern), x2)
            step = StepFunction.apply(z, theta_j, eps)
            l0 = step.sum() / x2.shape[0]
            norms = self.W_dec.norm(dim=1)[pattern.cols] if tanh else None
            codes = SparseCodes(pattern, values)

            def frequency() -> Tensor:
                counts = torch.zeros_like(theta).index_add(0, pattern.cols, step.to(theta.dtype))
                return counts / x2.shape[0]

        elif self._codes_sparse_in_dense_window(pre, buffer):
            pattern = SparsePattern.from_mask(buffer)
            values = sparse_pre_acts(sae_in, self.W_enc, self.b_enc, pre, pattern, b_dec)
            codes = SparseCodes(pattern, values)
            x_hat, firing = WindowThreshold.apply(
                sparse_decode(values, self.W_dec, self.b_dec, pattern),
                theta,
                self.W_dec,
                pattern.ccol.diff(),
                self._kernel_window(pre),
                eps,
            )
            x_hat = self.with_skip(x_hat, x2)
            l0, norms = firing.sum(), None

            def frequency() -> Tensor:
                return firing

        elif self.kernels.compile:
            return self._dense_objective()(x, y, sparsity_coefficient, dead)
        else:
            self.workspace.release("pre")  # π now lives in the autograd graph: not reused
            dtype = self.kernels.matmul_dtype
            z = dense_pre_acts_with_grad(sae_in, self.W_enc, self.b_enc, pre, b_dec, dtype)
            codes = values = JumpReLUFunction.apply(z, theta, eps)
            with matmul_autocast(x.device, dtype):
                x_hat = self.with_skip(self.decode(codes), x2)
            step = StepFunction.apply(z, theta, eps)
            l0 = step.sum(-1).mean()
            norms = self.W_dec.norm(dim=1) if tanh else None

            def frequency() -> Tensor:
                return step.mean(0)

        sparsity = self.sparsity_term(l0, values, norms, sparsity_coefficient, x2.shape[0])
        terms = self._terms(
            y2,
            x2,
            x_hat,
            codes,
            sparsity,
            frequency,
            pre,
            dead,
            lambda columns: sparse_aux_k_loss(
                (y2 - x_hat).detach(),
                sae_in,
                pre.detach(),
                columns,
                self.k_aux,
                self.W_enc,
                self.b_enc,
                self.W_dec,
                b_dec,
            ),
        )
        return TrainOutput(sum(terms.values()), terms, codes, x_hat.reshape(y.shape))

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        self.threshold.clamp_(min=MIN_THRESHOLD)

    def _scale_encoder_offsets(self, c: float) -> None:
        super()._scale_encoder_offsets(c)
        self.threshold *= c
