"""Neuron resampling (SPEC §2.1 optional; Anthropic 2023), for every architecture."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.sae import SAE

ENCODER_SCALE = 0.2
# SPEC §2.1 resampling sets W_dec, W_enc and b_enc (= 0, like b_mag). The other per-latent
# parameters take what a typical alive latent has: offsets that act as firing thresholds
# (JumpReLU θ, Gated b_gate) keep the alive median of value / ‖W_enc column‖, so a revived
# latent needs as large a projection onto its direction to fire as a typical latent does (a
# fixed small θ would make it fire on half the inputs); the log-scale r_mag takes the median.
ZEROED = ("b_enc", "b_mag")
SCALED_WITH_ENCODER = ("threshold", "b_gate")
ALIVE_MEDIAN = ("r_mag",)


@torch.no_grad()
def resample_dead_latents(
    sae: SAE,
    x: Tensor,
    dead_mask: Tensor,
    optimizer: torch.optim.Optimizer,
    target: Tensor | None = None,
) -> Tensor:
    """Point dead latents at inputs sampled ∝ squared loss; returns their indices (LongTensor).

    Decoder row = the input's direction (a transcoder's: its target's, SPEC §2.6), encoder
    column = the input's direction × 0.2 × the mean alive encoder norm; every other per-latent
    parameter (sae.latent_parameters()) is re-initialised as above, and the Adam moments of
    every revived entry are zeroed.
    """
    dead = dead_mask.nonzero().squeeze(1)
    if dead.numel() == 0:
        return dead
    y = sae.split_target(x, target)
    loss = (y - sae(x)).pow(2).sum(-1)
    weights = loss.pow(2)
    if float(weights.sum()) == 0:
        weights = torch.ones_like(weights)
    picked = torch.multinomial(weights, dead.numel(), replacement=dead.numel() > x.shape[0])
    directions = _unit(y[picked].to(sae.W_dec.dtype) - sae.b_dec)
    read = _unit(x[picked].to(sae.W_dec.dtype)) if sae.cfg.transcoder else directions
    # Statistics of the alive latents (all latents when none is alive), before any change.
    alive = ~dead_mask if bool((~dead_mask).any()) else torch.ones_like(dead_mask)
    enc_norms = sae.W_enc.norm(dim=0)
    enc_norm = enc_norms[alive].mean()
    dec_norm = sae.W_dec[alive].norm(dim=1).mean()
    names = {id(p): name for name, p in sae.named_parameters()}
    for param, dim in sae.latent_parameters():
        name = names[id(param)]
        if name == "W_dec":
            value = directions * (1.0 if sae.unit_norm_decoder else dec_norm)
        elif name == "W_enc":
            value = read.T * enc_norm * ENCODER_SCALE
        elif name in ZEROED:
            value = param.new_zeros(())
        elif name in SCALED_WITH_ENCODER:
            value = (param[alive] / enc_norms[alive]).median() * enc_norm * ENCODER_SCALE
        elif name in ALIVE_MEDIAN:
            value = param[alive].median()
        else:
            raise ValueError(f"resampling cannot re-initialise {type(sae).__name__}.{name}")
        shape = list(param.shape)
        shape[dim] = dead.numel()
        param.index_copy_(dim, dead, value.to(param.dtype).expand(shape))
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in state:
                state[key].index_fill_(dim, dead, 0.0)
    return dead


def _unit(rows: Tensor) -> Tensor:
    """Each row divided by its norm (zero rows stay zero)."""
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
