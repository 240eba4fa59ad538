"""Gemma Scope 2 and Llama Scope folders, as published on the Hub (SAELens reads the same).

Gemma Scope 2 (google/gemma-scope-2-*): FOLDER/params.safetensors with w_enc (d_in, d_sae),
w_dec (d_sae, d_out), b_enc, b_dec, threshold and, for affine transcoders,
affine_skip_connection (d_in, d_out); an optional FOLDER/config.json. The folder path names the
site and layer: resid_post/layer_12_…, mlp_out/…, transcoder…/layer_5_… (mlp_in → mlp_out).

Llama Scope (fnlp/Llama3_1-8B-Base-LX*): FOLDER/hyperparams.json (d_model, d_sae, hook_point_in,
jump_relu_threshold, dataset_average_activation_norm.in) and FOLDER/checkpoints/final.safetensors
(encoder.weight (d_sae, d_in), decoder.weight (d_in, d_sae), encoder.bias, decoder.bias). It
encodes s·x with s = √d_in / average norm and reconstructs x̂/s; folding s into the encoder (and
1/s into the decoder) gives the same codes on raw activations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saelab.formats.checks import load_checked_state
from saelab.formats.errors import SAEFileError
from saelab.sae import SAE, SAEConfig, build_sae

GEMMA_SCOPE_2_FILE = "params.safetensors"
LLAMA_SCOPE_CONFIG = "hyperparams.json"
LLAMA_SCOPE_WEIGHTS = "checkpoints/final.safetensors"


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SAEFileError(path, f"not a readable safetensors file ({e})") from None


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SAEFileError(path, f"not a readable JSON file ({e})") from None


def gemma_scope_2_hooks(folder: Path) -> tuple[str | None, str | None]:
    """(hook read, hook written for a transcoder or None) from the folder's path."""
    text = folder.as_posix()
    layer = re.search(r"layer_(\d+)", text)
    if layer is None:
        return None, None
    n = layer.group(1)
    if "transcoder" in text or "clt" in text:
        return f"blocks.{n}.hook_mlp_in", f"blocks.{n}.hook_mlp_out"
    for site, hook in (("resid_post", "hook_resid_post"), ("mlp_out", "hook_mlp_out")):
        if site in text:
            return f"blocks.{n}.{hook}", None
    return None, None


def load_gemma_scope_2(folder: Path, device: str | torch.device = "cpu") -> SAE:
    """A Gemma Scope 2 folder (module docstring) as a JumpReLU SAE or transcoder."""
    raw = _tensors(folder / GEMMA_SCOPE_2_FILE)
    missing = [k for k in ("w_enc", "w_dec", "b_enc", "b_dec", "threshold") if k not in raw]
    if missing:
        raise SAEFileError(folder / GEMMA_SCOPE_2_FILE, f"missing tensor(s) {missing}")
    config = _json(folder / "config.json") if (folder / "config.json").is_file() else {}
    hook, target = gemma_scope_2_hooks(folder)
    d_in, d_sae = raw["w_enc"].shape
    d_out = raw["w_dec"].shape[1]
    skip = "affine_skip_connection" in raw
    transcoder = target is not None or d_out != d_in or skip
    cfg = SAEConfig(
        architecture="jumprelu", d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False,
        d_out=d_out if transcoder else None, skip_connection=skip,
        target_hook_name=target if transcoder else None, hook_name=hook,
        model_name=config.get("model_name"),
    )  # fmt: skip
    state = {
        "W_enc": raw["w_enc"], "W_dec": raw["w_dec"], "b_enc": raw["b_enc"],
        "b_dec": raw["b_dec"], "threshold": raw["threshold"],
    }  # fmt: skip
    if skip:
        state["W_skip"] = raw["affine_skip_connection"].T.contiguous()
    return load_checked_state(build_sae(cfg), state, folder / GEMMA_SCOPE_2_FILE).to(device)


def load_llama_scope(folder: Path, device: str | torch.device = "cpu") -> SAE:
    """A Llama Scope folder (module docstring) as a JumpReLU SAE on raw activations."""
    hyper = _json(folder / LLAMA_SCOPE_CONFIG)
    raw = _tensors(folder / LLAMA_SCOPE_WEIGHTS)
    try:
        d_in, d_sae = int(hyper["d_model"]), int(hyper["d_sae"])
        scale = d_in**0.5 / float(hyper["dataset_average_activation_norm"]["in"])
        threshold = float(hyper["jump_relu_threshold"])
        W_enc, W_dec = raw["encoder.weight"].T * scale, raw["decoder.weight"].T / scale
        b_enc, b_dec = raw["encoder.bias"], raw["decoder.bias"] / scale
    except (KeyError, TypeError, ValueError) as e:
        raise SAEFileError(
            folder, f"not a Llama Scope folder: {e!r} missing or malformed"
        ) from None
    cfg = SAEConfig(
        architecture="jumprelu", d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False,
        hook_name=hyper.get("hook_point_in"), model_name="meta-llama/Llama-3.1-8B",
    )  # fmt: skip
    state = {
        "W_enc": W_enc.contiguous(), "W_dec": W_dec.contiguous(), "b_enc": b_enc, "b_dec": b_dec,
        "threshold": torch.full((d_sae,), threshold),
    }  # fmt: skip
    return load_checked_state(build_sae(cfg), state, folder / LLAMA_SCOPE_WEIGHTS).to(device)
