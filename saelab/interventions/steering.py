"""Steering: greedy generation with and without a latent intervention, side by side."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig

from saelab.data.packing import begin_token_id
from saelab.interventions.edit import check_latents, latent_intervention
from saelab.lm.model import LanguageModel
from saelab.sae import SAE


@dataclass
class SteeringResult:
    """A prompt's continuation without (baseline) and with (steered) the intervention."""

    prompt: str
    baseline: str
    steered: str
    latents: dict[int, float]
    mode: str
    from_position: int | None = None
    max_new_tokens: int = 32
    baseline_tokens: list[str] = field(default_factory=list)
    steered_tokens: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (latent keys become strings in JSON)."""
        return asdict(self)


def encode_prompt(lm: LanguageModel, text: str) -> torch.Tensor:
    """(1, seq) token ids of text, starting with the begin token (BOS, or EOS without one)."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([[begin_token_id(lm.tokenizer), *ids]], device=lm.device)


def _generation_config(lm: LanguageModel, max_new_tokens: int, sample: bool) -> GenerationConfig:
    """Greedy (or plain sampling) settings, independent of the model's own generation_config."""
    tokenizer = lm.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        top_k=None,
        top_p=None,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def _generate(
    lm: LanguageModel, ids: torch.Tensor, config: GenerationConfig, seed: int
) -> list[int]:
    """New token ids of one generate call (seeded, so sampling is reproducible)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[0, ids.shape[1] :].tolist()


def steer(
    lm: LanguageModel,
    sae: SAE,
    hook: str,
    prompt: str,
    latents: Mapping[int, float],
    *,
    max_new_tokens: int = 32,
    from_position: int | None = None,
    mode: str = "add",
    seed: int = 0,
    sample: bool = False,
) -> SteeringResult:
    """Generate from prompt twice, clean and with `latents` edited at `hook`; greedy by default.

    mode "add" adds strength·d_i, "clamp" sets latent i to its value, "ablate" sets it to 0
    (error term kept; see saelab.interventions.edit). from_position: first absolute token index
    (BOS = 0) that is edited. The hooks are removed afterwards, also on errors.
    """
    check_latents(sae, latents, mode)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}.")
    latents = {int(i): float(v) for i, v in latents.items()}
    ids = encode_prompt(lm, prompt)
    config = _generation_config(lm, max_new_tokens, sample)
    baseline = _generate(lm, ids, config, seed)
    with latent_intervention(lm, sae, hook, latents, mode=mode, from_position=from_position):
        steered = _generate(lm, ids, config, seed)
    decode = lm.tokenizer.decode
    return SteeringResult(
        prompt=prompt,
        baseline=decode(baseline, skip_special_tokens=True),
        steered=decode(steered, skip_special_tokens=True),
        latents=latents,
        mode=mode,
        from_position=from_position,
        max_new_tokens=max_new_tokens,
        baseline_tokens=[decode([t]) for t in baseline],
        steered_tokens=[decode([t]) for t in steered],
    )
