"""Latent edits at an SAE's hook: add α·d_i, clamp a latent, or ablate latents, error term kept.

With the SAE in the loop and its reconstruction error e = x − x̂(f) kept, replacing the code f by
f' gives x' = x̂(f') + e = x + (f' − f) W_dec (SPEC §2 "Common": x̂ = f W_dec + b_dec is affine),
so only the edited latents change the activation and an unchanged code leaves it exactly as is:
- "add":    f'_i = f_i + α_i, i.e. x' = x + Σ α_i d_i (no encoding needed);
- "clamp":  f'_i = v_i;
- "ablate": f'_i = 0 (the given values are ignored).
A transcoder (SPEC §2.6) encodes x at its input hook and writes at its target hook, so there
y' = y + (f'(x) − f(x)) W_dec: its latents are edited where their output enters the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from saelab.data import sae_token_mask, special_token_ids
from saelab.lm.intervene import observe, replace_activation
from saelab.lm.model import LanguageModel
from saelab.sae import SAE

MODES = ("add", "clamp", "ablate")


def check_latents(sae: SAE, latents: Mapping[int, float], mode: str) -> None:
    """Raise ValueError naming the bad mode or latent index (valid: 0 … d_sae − 1)."""
    if mode not in MODES:
        raise ValueError(f"Unknown intervention mode {mode!r}; valid: {', '.join(MODES)}.")
    if not latents:
        raise ValueError("No latents given: pass at least one latent index.")
    bad = [i for i in latents if not 0 <= int(i) < sae.cfg.d_sae]
    if bad:
        raise ValueError(
            f"Latent index {bad[0]} is out of range for this SAE: valid 0 … {sae.cfg.d_sae - 1}."
        )


def edit_activation(
    sae: SAE, x: Tensor, latents: Mapping[int, float], mode: str, source: Tensor | None = None
) -> Tensor:
    """x' = x + (f' − f) W_dec for activations x (..., d_out), in x's dtype (module docstring);
    f is encoded from `source`, a transcoder's input at the same positions (default: x)."""
    keys = sorted(int(i) for i in latents)
    index = torch.tensor(keys, device=sae.device, dtype=torch.long)
    values = torch.tensor([float(latents[i]) for i in keys], device=sae.device)
    x_sae = x.to(device=sae.device, dtype=sae.W_dec.dtype)
    directions = sae.W_dec[index]
    if mode == "add":
        change = values.to(directions.dtype).expand(*x_sae.shape[:-1], len(index))
    else:
        read = x_sae if source is None else source.to(device=sae.device, dtype=sae.W_dec.dtype)
        current = sae.encode(read)[..., index]
        target = torch.zeros_like(current) if mode == "ablate" else values.to(current.dtype)
        change = target - current
    return (x_sae + change @ directions).to(device=x.device, dtype=x.dtype)


def forward_positions(kwargs: dict) -> Tensor | int:
    """Absolute positions of a forward's tokens as the model counts them, or the first one.

    HF models take position_ids (what transformers ≥ 5 `generate` passes; built from the
    attention mask, so left padding is not counted), else cache_position (4.x), else they
    start at the length their cache reports (0 without a cache); this follows the same order.
    """
    for name in ("position_ids", "cache_position"):
        if isinstance(kwargs.get(name), Tensor):
            return kwargs[name]
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0


@contextmanager
def latent_intervention(
    lm: LanguageModel,
    sae: SAE,
    hook: str,
    latents: Mapping[int, float],
    *,
    mode: str = "add",
    from_position: int | None = None,
) -> Iterator[None]:
    """Within the block, every forward of lm edits the SAE latents at `hook` (module docstring).

    `hook` is the one the SAE reads; a transcoder's edits land at its target hook.

    Positions holding BOS/EOS/pad keep their clean activation (as in SPEC §3's spliced runs);
    with from_position, so do tokens whose absolute index is below it. That index is the token's
    position as the model itself counts it (`forward_positions`): also right in cached
    incremental decoding with any cache class, and with left padding it counts each sequence's
    own tokens from 0, so a padded batch is edited as each prompt alone. Hooks are removed on
    exit, also when the block raises.
    """
    check_latents(sae, latents, mode)
    if from_position is not None and from_position < 0:
        raise ValueError(f"from_position must be ≥ 0, got {from_position}.")
    write = hook
    if sae.cfg.transcoder:
        if not sae.cfg.target_hook_name:
            raise ValueError("this transcoder records no target_hook_name: nowhere to edit")
        write = sae.cfg.target_hook_name
    excluded = special_token_ids(lm.tokenizer)
    state: dict[str, object] = {"positions": 0, "ids": None, "input": None}

    def track(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        state["positions"] = forward_positions(kwargs)
        state["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def edit(activation: Tensor) -> Tensor:
        batch, seq = activation.shape[:2]
        positions = state["positions"]
        if not isinstance(positions, Tensor):
            positions = positions + torch.arange(seq)
        mask = (positions.to(activation.device) >= (from_position or 0)).expand(batch, seq)
        ids = state["ids"]
        if isinstance(ids, Tensor) and ids.shape == (batch, seq):
            mask = mask & sae_token_mask(ids.to(activation.device), excluded)
        if not mask.any():
            return activation
        out = activation.clone()
        source = state["input"][mask] if write != hook else None
        out[mask] = edit_activation(sae, activation[mask], latents, mode, source)
        return out

    def keep_input(activation: Tensor) -> None:
        state["input"] = activation

    handles = [lm.model.register_forward_pre_hook(track, with_kwargs=True)]
    if write != hook:
        handles.append(observe(lm.model, hook, keep_input))
    try:
        with replace_activation(lm.model, write, edit):
            yield
    finally:
        for handle in handles:
            handle.remove()
