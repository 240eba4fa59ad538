"""Integration: latent attribution on gemma-3-270m predicts the measured zero-ablation effects
of its top 20 latents (SPEC §5), with the model's output unchanged by the splice."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.interventions.attribution import check_ablations, correlation, make_metric
from saelab.interventions.steering import encode_prompt

pytestmark = [pytest.mark.gemma, pytest.mark.slow]

# An unsaturated prediction (p ≈ 0.4): log p of a near-certain token is flat in every latent.
PROMPT = "for i in range("
TARGET = "1"


def test_attribution_predicts_the_ablation_effects_of_the_top_20_latents(gemma_sae, capsys):
    lm = saelab.load_model("gemma-3-270m", device="cpu")
    result = saelab.attribute(lm, gemma_sae, PROMPT, TARGET)
    with torch.no_grad():
        logits = lm.model(input_ids=encode_prompt(lm, PROMPT), use_cache=False).logits
    assert result.value == pytest.approx(float(make_metric(lm, TARGET)(logits)), abs=1e-4)
    rows = check_ablations(lm, result, PROMPT, 20)
    rho = correlation(rows)
    with capsys.disabled():
        print(f"\ngemma-3-270m {gemma_sae.cfg.hook_name}, log p({TARGET!r}) = {result.value:.3f}: "
              f"correlation of estimated and measured ablation effects over the top 20 latents "
              f"{rho:.3f}")  # fmt: skip
    assert rho is not None and rho > 0
