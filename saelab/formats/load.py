"""`saelab.load_sae`: one entry point for every SAE file layout, local or on the Hub."""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.formats.errors import SAEFileError
from saelab.formats.gemmascope import load_gemma_scope
from saelab.formats.hub import download_sae, parse_hub_ref, resolve_release
from saelab.formats.saelens import CFG_FILE, load_sae_dir
from saelab.formats.scopes import (
    GEMMA_SCOPE_2_FILE,
    LLAMA_SCOPE_CONFIG,
    load_gemma_scope_2,
    load_llama_scope,
)
from saelab.lm.dtypes import parse_dtype
from saelab.sae import SAE


def load_sae(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    *,
    release: str | None = None,
    sae_id: str | None = None,
) -> SAE:
    """Load an SAE from a saelab/SAELens directory (cfg.json + sae_weights.safetensors),
    a run directory (its sae/ folder), a Gemma Scope params.npz (file or its folder), a Gemma
    Scope 2 or Llama Scope folder, a Hub reference "hf://owner/repo/path[@revision]", or a
    SAELens release and SAE id (saelab.formats.hub)."""
    if release is not None or sae_id is not None:
        if path is not None or release is None or sae_id is None:
            raise ValueError("give either a path or both release= and sae_id=")
        return load_sae(str(resolve_release(release, sae_id)), device, dtype)
    if path is None:
        raise ValueError("give a path, or release= and sae_id=")
    ref = parse_hub_ref(path)
    if ref is not None:
        return load_sae(download_sae(ref), device, dtype)
    p = Path(path)
    if p.is_dir() and (p / GEMMA_SCOPE_2_FILE).is_file():
        return _with_dtype(load_gemma_scope_2(p, device), dtype)
    if p.is_dir() and (p / LLAMA_SCOPE_CONFIG).is_file():
        return _with_dtype(load_llama_scope(p, device), dtype)
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


def _with_dtype(sae: SAE, dtype: str | None) -> SAE:
    """The SAE in `dtype` when one is asked for (its cfg says so too)."""
    if dtype is None:
        return sae
    sae.cfg.dtype = dtype
    return sae.to(parse_dtype(dtype))


def sweep_members(path: Path) -> list[Path]:
    """The subfolders of `path` that hold an SAE (cfg.json or sae/cfg.json), sorted by name."""
    return sorted(
        d
        for d in path.iterdir()
        if d.is_dir() and ((d / CFG_FILE).is_file() or (d / "sae" / CFG_FILE).is_file())
    )
