"""Gemma Scope `params.npz` files: a JumpReLU SAE on raw activations, no pre-encoder bias."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from saelab.formats.checks import load_checked_state
from saelab.formats.errors import SAEFileError
from saelab.sae import SAE, SAEConfig, build_sae

NPZ_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def load_gemma_scope(
    path: Path, device: str | torch.device = "cpu", dtype: str | None = None
) -> SAE:
    """Load a Gemma Scope params.npz (W_enc (d_in, d_sae), W_dec, b_enc, b_dec, threshold)."""
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise SAEFileError(path, f"not a readable .npz file ({e})") from None
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise SAEFileError(
            path, f"missing array(s) {missing}; a Gemma Scope params.npz holds {list(NPZ_KEYS)}"
        )
    if arrays["W_enc"].ndim != 2:
        raise SAEFileError(
            path, f"W_enc must be 2-D (d_in, d_sae), got shape {arrays['W_enc'].shape}"
        )
    d_in, d_sae = arrays["W_enc"].shape
    cfg = SAEConfig(
        architecture="jumprelu",
        d_in=d_in,
        d_sae=d_sae,
        dtype=dtype or "float32",
        apply_b_dec_to_input=False,
    )
    state = {k: torch.from_numpy(np.asarray(arrays[k], dtype=np.float32)) for k in NPZ_KEYS}
    return load_checked_state(build_sae(cfg), state, path).to(device)


def save_gemma_scope(sae: SAE, path: Path) -> Path:
    """Write a JumpReLU SAE without pre-encoder bias as a Gemma Scope params.npz."""
    if sae.cfg.architecture != "jumprelu" or sae.cfg.apply_b_dec_to_input:
        raise ValueError("Gemma Scope files hold JumpReLU SAEs with apply_b_dec_to_input=False")
    np.savez(path, **{k: sae.state_dict()[k].detach().float().cpu().numpy() for k in NPZ_KEYS})
    return path
