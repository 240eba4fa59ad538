"""The analysis pass: LM forward to the hook, SAE encode, accumulate — one batch at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from saelab.analysis.accumulator import AnalysisConfig, FeatureAccumulator
from saelab.data import sae_token_mask, special_token_ids
from saelab.lm.model import LanguageModel
from saelab.sae import SAE


@torch.no_grad()
def analyze_stream(
    lm: LanguageModel,
    sae: SAE,
    hook: str,
    batches: Iterable[torch.Tensor],
    config: AnalysisConfig | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> FeatureAccumulator:
    """Stream (batch, seq) token batches through LM and SAE; return the filled accumulator.

    Only one batch of activations exists at a time; BOS/EOS/pad positions are excluded
    (the same positions as training and evaluation, SPEC §3).
    """
    config = config or AnalysisConfig()
    special = special_token_ids(lm.tokenizer)
    sae = sae.to(lm.device)
    accumulator = FeatureAccumulator(sae.cfg.d_sae, config, lm.device)
    for ids in batches:
        ids = ids.to(lm.device)
        x = lm.activations(ids, hook)[hook]
        if x.shape[-1] != sae.cfg.d_in:
            raise ValueError(
                f"Hook {hook!r} gives vectors of size {x.shape[-1]} but the SAE expects "
                f"d_in={sae.cfg.d_in}: pass the hook the SAE was trained on."
            )
        accumulator.update(ids, sae.encode(x), sae_token_mask(ids, special))
        if on_progress is not None:
            on_progress(accumulator.n_tokens)
    return accumulator
