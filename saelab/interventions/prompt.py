"""Prompt analysis: the top SAE latents at each token of a text, with their activations, and
dense (always-on) latents set apart (saelab.analysis.dense)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from saelab.analysis.dense import (
    DENSE_THRESHOLD,
    MIN_SAMPLE_TOKENS,
    DenseLatents,
    check_count,
    is_dense,
)
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


@dataclass
class PromptCodes:
    """A text's token ids (begin token first), its SAE codes (seq, d_sae) as float32 on the CPU,
    and the positions that are scored (every token but BOS/EOS/pad)."""

    ids: list[int]
    codes: Tensor
    scored: list[int]

    def fired(self) -> Tensor:
        """(d_sae,) bool: fires on at least one scored token."""
        return (self.codes[self.scored] > 0).any(dim=0)

    def frequency(self) -> Tensor:
        """(d_sae,) float64: fraction of the scored tokens on which each latent fires."""
        return (self.codes[self.scored] > 0).double().mean(dim=0)


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


def encode_text(lm: LanguageModel, sae: SAE, hook: str, text: str) -> PromptCodes:
    """Run text (begin token prepended) through the LM and the SAE."""
    ids = encode_prompt(lm, text)
    codes = sae_codes(lm, sae, hook, ids)[0].float().cpu()
    excluded = set(special_token_ids(lm.tokenizer))
    tokens = ids[0].tolist()
    return PromptCodes(tokens, codes, [p for p, t in enumerate(tokens) if t not in excluded])


def top_latents(
    lm: LanguageModel, prompt: PromptCodes, k: int = 5, exclude: Tensor | None = None
) -> list[TokenLatents]:
    """For each scored token, the k latents with the largest positive activation, largest
    first (fewer when fewer fire); latents where the (d_sae,) bool mask exclude is set never
    appear."""
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}.")
    codes = prompt.codes if exclude is None else prompt.codes.masked_fill(exclude, 0.0)
    values, indices = codes.topk(min(k, codes.shape[-1]), dim=-1)
    rows = []
    for position in prompt.scored:
        fired = [
            (int(i), float(v))
            for i, v in zip(indices[position].tolist(), values[position].tolist(), strict=True)
            if v > 0
        ]
        token = lm.tokenizer.decode([prompt.ids[position]])
        rows.append(TokenLatents(position, token, fired))
    return rows


def top_latents_per_token(
    lm: LanguageModel,
    sae: SAE,
    hook: str,
    text: str,
    k: int = 5,
    exclude: Tensor | None = None,
) -> list[TokenLatents]:
    """For each non-special token of text (BOS is position 0), the k latents with the largest
    positive activation, largest first, leaving out the latents set in the bool mask exclude."""
    return top_latents(lm, encode_text(lm, sae, hook, text), k, exclude)


def analyze_prompt(
    lm: LanguageModel,
    sae: SAE,
    hook: str,
    text: str,
    *,
    k: int = 5,
    frequency: Sequence[float] | None = None,
    source: str | None = None,
    threshold: float = DENSE_THRESHOLD,
    exclude_dense: bool = True,
) -> tuple[list[TokenLatents], DenseLatents]:
    """Top latents per token with dense latents (frequency > threshold) set apart.

    frequency: each latent's firing frequency (features.sqlite, named by source); without it,
    it is measured on the prompt's own tokens when there are at least MIN_SAMPLE_TOKENS of them,
    else nothing counts as dense. With exclude_dense the dense latents are left out of the
    per-token lists; either way the dense latents that fire on the prompt are listed apart.
    """
    check_count(frequency, sae.cfg.d_sae, source)
    prompt = encode_text(lm, sae, hook, text)
    if frequency is None and len(prompt.scored) >= MIN_SAMPLE_TOKENS:
        frequency = prompt.frequency().tolist()
        source = f"the prompt's {len(prompt.scored)} tokens"
    dense = DenseLatents.among(
        frequency,
        prompt.fired().nonzero().flatten().tolist(),
        threshold=threshold,
        excluded=exclude_dense,
        source=source,
    )
    exclude = None
    if exclude_dense and frequency is not None:
        exclude = is_dense(torch.tensor(frequency, dtype=torch.float64), threshold)
    return top_latents(lm, prompt, k, exclude), dense
