"""Validate a loaded state dict against the SAE it is meant for, naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.formats.errors import SAEFileError
from saelab.sae import SAE


def load_checked_state(sae: SAE, state: dict[str, torch.Tensor], path: Path) -> SAE:
    """Copy `state` into `sae` after checking key names and shapes; errors name the file."""
    expected = {k: v.shape for k, v in sae.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise SAEFileError(
            path,
            f"missing tensor(s) {missing} for a {sae.cfg.architecture} SAE; found {sorted(state)}",
        )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise SAEFileError(
            path,
            f"unexpected tensor(s) {unexpected} for a {sae.cfg.architecture} SAE; expected {sorted(expected)}",
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise SAEFileError(
                path,
                f"tensor {name!r} has shape {tuple(state[name].shape)} but the config "
                f"(d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}) needs {tuple(shape)}",
            )
        if not torch.isfinite(state[name].float()).all():
            raise SAEFileError(path, f"tensor {name!r} contains NaN or infinite values")
    with torch.no_grad():
        for name, param in sae.state_dict().items():
            param.copy_(state[name].to(param.dtype))
    return sae
