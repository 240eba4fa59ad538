"""`saelab.load_sae`: one entry point for saelab/SAELens directories and Gemma Scope npz files."""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.formats.errors import SAEFileError
from saelab.formats.gemmascope import load_gemma_scope
from saelab.formats.saelens import CFG_FILE, load_sae_dir
from saelab.sae import SAE


def load_sae(path: str | Path, device: str | torch.device = "cpu", dtype: str | None = None) -> SAE:
    """Load an SAE from a saelab/SAELens directory (cfg.json + sae_weights.safetensors),
    a run directory (its sae/ folder), or a Gemma Scope params.npz (file or its folder)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".npz":
        return load_gemma_scope(p, device, dtype)
    if p.is_dir() and (p / CFG_FILE).exists():
        return load_sae_dir(p, device, dtype)
    if p.is_dir() and (p / "sae" / CFG_FILE).exists():
        return load_sae_dir(p / "sae", device, dtype)
    if p.is_dir() and (p / "params.npz").exists():
        return load_gemma_scope(p / "params.npz", device, dtype)
    if not p.exists():
        raise SAEFileError(p, "no such file or directory")
    members = sweep_members(p) if p.is_dir() else []
    if members:
        raise SAEFileError(
            p,
            f"a sweep directory holding {len(members)} SAEs, not one; load one of its members: "
            + ", ".join(str(m) for m in members),
        )
    raise SAEFileError(
        p,
        f"not an SAE: expected a directory with {CFG_FILE} + sae_weights.safetensors, "
        "a run directory with sae/, or a Gemma Scope params.npz",
    )


def sweep_members(path: Path) -> list[Path]:
    """The subfolders of `path` that hold an SAE (cfg.json or sae/cfg.json), sorted by name."""
    return sorted(
        d
        for d in path.iterdir()
        if d.is_dir() and ((d / CFG_FILE).is_file() or (d / "sae" / CFG_FILE).is_file())
    )
