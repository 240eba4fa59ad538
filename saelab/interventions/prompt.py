"""Prompt analysis: the top SAE latents at each token of a text, with their activations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from saelab.data import special_token_ids
from saelab.interventions.steering import encode_prompt
from saelab.lm.model import LanguageModel
from saelab.sae import SAE


@dataclass
class TokenLatents:
    """One token of the prompt and its k most active latents [(latent, activation), …]."""

    position: int
    token: str
    latents: list[tuple[int, float]]
    explanations: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; latents as [[latent, activation], …]."""
        return {**asdict(self), "latents": [[i, a] for i, a in self.latents]}


def sae_codes(
    lm: LanguageModel,
    sae: SAE,
    hook: str,
    ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SAE feature activations f (batch, seq, d_sae) of token ids at `hook`."""
    x = lm.activations(ids, hook, attention_mask)[hook]
    if x.shape[-1] != sae.cfg.d_in:
        raise ValueError(
            f"SAE d_in={sae.cfg.d_in} does not match the width {x.shape[-1]} of hook {hook!r} "
            f"on model {lm.name!r}."
        )
    with torch.no_grad():
        return sae.encode(x.to(device=sae.device, dtype=sae.W_dec.dtype))


def top_latents_per_token(
    lm: LanguageModel, sae: SAE, hook: str, text: str, k: int = 5
) -> list[TokenLatents]:
    """For each non-special token of text (BOS is position 0), the k latents with the largest
    positive activation, largest first (fewer when fewer fire)."""
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}.")
    ids = encode_prompt(lm, text)
    codes = sae_codes(lm, sae, hook, ids)[0].float()
    values, indices = codes.topk(min(k, sae.cfg.d_sae), dim=-1)
    excluded = set(special_token_ids(lm.tokenizer))
    rows = []
    for position, token_id in enumerate(ids[0].tolist()):
        if token_id in excluded:
            continue
        fired = [
            (int(i), float(v))
            for i, v in zip(indices[position].tolist(), values[position].tolist(), strict=True)
            if v > 0
        ]
        rows.append(TokenLatents(position, lm.tokenizer.decode([token_id]), fired))
    return rows
