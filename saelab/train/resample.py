"""Neuron resampling for ReLU SAEs (SPEC §2.1 optional; Anthropic 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.sae import SAE

ENCODER_SCALE = 0.2


@torch.no_grad()
def resample_dead_latents(
    sae: SAE, x: Tensor, dead_mask: Tensor, optimizer: torch.optim.Adam
) -> int:
    """Point dead latents at inputs sampled ∝ squared loss; returns how many were resampled.

    Decoder row = the input's direction, encoder column = that direction × 0.2 × the mean alive
    encoder norm, b_enc = 0, and the Adam moments of those entries are reset.
    """
    dead = dead_mask.nonzero().squeeze(1)
    if dead.numel() == 0:
        return 0
    loss = (x - sae(x)).pow(2).sum(-1)
    weights = loss.pow(2)
    if float(weights.sum()) == 0:
        weights = torch.ones_like(weights)
    picked = torch.multinomial(weights, dead.numel(), replacement=dead.numel() > x.shape[0])
    directions = x[picked] - sae.b_dec
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead_mask
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    dec_norm = sae.W_dec[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec[dead] = directions * (1.0 if sae.unit_norm_decoder else dec_norm)
    sae.W_enc[:, dead] = directions.T * enc_norm * ENCODER_SCALE
    sae.b_enc[dead] = 0.0
    for param, index in (
        (sae.W_dec, (dead,)),
        (sae.W_enc, (slice(None), dead)),
        (sae.b_enc, (dead,)),
    ):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0
    return dead.numel()
