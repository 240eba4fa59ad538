"""SAE directories in SAELens's format: cfg.json + sae_weights.safetensors (DESIGN.md "Files")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saelab.files import save_safetensors
from saelab.formats.checks import load_checked_state
from saelab.formats.errors import SAEFileError
from saelab.sae import SAE, SAEConfig, build_sae, sae_class

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# The SAELens config format version these files follow (the v6 layout, with "metadata").
SAELENS_FORMAT_VERSION = "6.0.0"
SAELENS_TO_SAELAB = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk", "gated": "gated"}
# SAELens's transcoder classes (SPEC §2.6), by the SAE architecture saelab exports and whether
# it has a skip connection. SAELens has no TopK or Gated transcoder: those are written under a
# saelab-only name that SAELens refuses clearly instead of misreading the weights.
SAELENS_TRANSCODERS = {
    ("standard", False): "transcoder",
    ("standard", True): "skip_transcoder",
    ("jumprelu", False): "jumprelu_transcoder",
    ("jumprelu", True): "jumprelu_skip_transcoder",
}
TRANSCODER_TO_SAE = {name: key for key, name in SAELENS_TRANSCODERS.items()}
PROVENANCE = {
    "model_name": "model_name",
    "hook_name": "hook_name",
    "context_size": "context_size",
    "dataset_path": "dataset",
}


def _saelens_cfg(sae: SAE, architecture: str) -> dict[str, Any]:
    cfg = sae.cfg
    out: dict[str, Any] = {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None}
        | {sl: getattr(cfg, ours) for sl, ours in PROVENANCE.items()},
    }
    if architecture == "topk":
        out |= {"k": cfg.k, "rescale_acts_by_decoder_norm": False}
    if cfg.transcoder:
        key = (architecture, cfg.skip_connection)
        out["architecture"] = SAELENS_TRANSCODERS.get(key, f"saelab_{architecture}_transcoder")
        out["d_out"] = cfg.d_out
        out["metadata"]["hook_name_out"] = cfg.target_hook_name
    return out


def save_sae_dir(sae: SAE, path: Path, *, as_jumprelu: bool = False) -> Path:
    """Write `path`/cfg.json and `path`/sae_weights.safetensors; returns `path`.

    as_jumprelu (gated only): save the equivalent JumpReLU SAE (SPEC §2.3).
    """
    from saelab import __version__

    if as_jumprelu:
        if not hasattr(sae, "jumprelu_state"):
            raise ValueError(f"as_jumprelu applies to gated SAEs, not {sae.cfg.architecture}")
        architecture, state = "jumprelu", sae.jumprelu_state()
    else:
        architecture, state, _ = sae.export_state()
    ours = sae.cfg.to_dict() | {"architecture": SAELENS_TO_SAELAB[architecture]}
    if ours["architecture"] != sae.cfg.architecture:
        ours["metadata"] = dict(ours["metadata"], trained_as=sae.cfg.architecture)
    cfg = _saelens_cfg(sae, architecture) | {"saelab": ours, "saelab_version": __version__}
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_safetensors(tensors, path / WEIGHTS_FILE)
    (path / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def _config_from_saelens(raw: dict[str, Any], cfg_path: Path) -> SAEConfig:
    arch = raw.get("architecture", "standard")
    arch, skip = TRANSCODER_TO_SAE.get(arch, (arch, False))
    if arch not in SAELENS_TO_SAELAB:
        known = sorted([*SAELENS_TO_SAELAB, *TRANSCODER_TO_SAE])
        raise SAEFileError(cfg_path, f"unknown architecture {arch!r}; saelab reads {known}")
    transcoder = {}
    if raw.get("architecture") in TRANSCODER_TO_SAE:
        if "d_out" not in raw:
            raise SAEFileError(cfg_path, "missing field 'd_out' (a transcoder's output width)")
        meta = raw.get("metadata") or {}
        transcoder = {
            "d_out": int(raw["d_out"]),
            "skip_connection": skip,
            "target_hook_name": meta.get("hook_name_out"),
        }
    norm = raw.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise SAEFileError(
            cfg_path, f"normalize_activations={norm!r} is not supported; only 'none'"
        )
    if raw.get("rescale_acts_by_decoder_norm"):
        raise SAEFileError(cfg_path, "rescale_acts_by_decoder_norm=true is not supported")
    meta = raw.get("metadata") or {}
    fields = {ours: meta.get(sl, raw.get(sl)) for sl, ours in PROVENANCE.items()}
    try:
        return SAEConfig(
            architecture=SAELENS_TO_SAELAB[arch],
            d_in=int(raw["d_in"]),
            d_sae=int(raw["d_sae"]),
            dtype=raw.get("dtype", "float32"),
            apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
            k=raw.get("k"),
            **fields,
            **transcoder,
        )
    except KeyError as e:
        raise SAEFileError(cfg_path, f"missing field {e.args[0]!r}") from None


def read_config(path: Path) -> SAEConfig:
    """The SAEConfig recorded in `path`/cfg.json (saelab's own section when present)."""
    cfg_path = path / CFG_FILE
    try:
        raw = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise SAEFileError(path, f"no {CFG_FILE} in this directory") from None
    except json.JSONDecodeError as e:
        raise SAEFileError(cfg_path, f"not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise SAEFileError(cfg_path, "expected a JSON object")
    try:
        cfg = (
            SAEConfig.from_dict(raw["saelab"])
            if "saelab" in raw
            else _config_from_saelens(raw, cfg_path)
        )
        sae_class(cfg.architecture)
    except (TypeError, ValueError) as e:
        if isinstance(e, SAEFileError):
            raise
        raise SAEFileError(cfg_path, str(e)) from None
    for field in ("d_in", "d_sae"):
        if field in raw and "saelab" in raw and int(raw[field]) != getattr(cfg, field):
            raise SAEFileError(cfg_path, f"{field}={raw[field]} disagrees with the saelab section")
    return cfg


def load_sae_dir(path: Path, device: str | torch.device = "cpu", dtype: str | None = None) -> SAE:
    """Load a saelab or SAELens SAE directory, checking every tensor against cfg.json."""
    cfg = read_config(path)
    if dtype is not None:
        cfg.dtype = dtype
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise SAEFileError(path, f"no {WEIGHTS_FILE} in this directory")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise SAEFileError(weights, f"not a readable safetensors file ({e})") from None
    sae = load_checked_state(build_sae(cfg), state, weights)
    return sae.to(device)
