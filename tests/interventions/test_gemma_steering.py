"""Steering on gemma-3-270m: adding α·d_i late raises the log-prob of d_i's logit-lens tokens."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.interventions import latent_intervention, steer
from saelab.interventions.steering import encode_prompt
from saelab.lm.logits import head_logits

pytestmark = [pytest.mark.slow, pytest.mark.gemma]
PROMPT = "The weather in the mountains today is"


def test_steering_raises_logit_lens_tokens(gemma):
    lm = gemma["model"]
    layers = lm.model.config.num_hidden_layers
    hook = f"blocks.{layers - 2}.hook_resid_post"
    sae = saelab.create_sae("jumprelu", d_in=lm.d_model, d_sae=32, seed=0)
    latent = 11
    direction = sae.W_dec[latent].detach()
    with torch.no_grad():  # logit lens through the final norm (scale-free ranking)
        lens = head_logits(lm.model, lm.model.model.norm(direction[None]))[0]
    top = lens.topk(10).indices
    ids = encode_prompt(lm, PROMPT)
    x = lm.activations(ids, hook)[hook][0, 1:]
    alpha = float(x.norm(dim=-1).mean())  # comparable to the residual stream's own size

    def last_log_probs() -> torch.Tensor:
        with torch.no_grad():
            return lm.model(ids).logits[0, -1].float().log_softmax(-1)

    clean = last_log_probs()
    with latent_intervention(lm, sae, hook, {latent: 0.0}):
        torch.testing.assert_close(last_log_probs(), clean)
    with latent_intervention(lm, sae, hook, {latent: alpha}):
        steered = last_log_probs()
    gain = (steered[top] - clean[top]).mean()
    assert gain > 1.0, f"mean log-prob gain of the logit-lens tokens {gain:.3f}"
    everything = (steered - clean).mean()
    assert gain > everything + 1.0
    result = steer(lm, sae, hook, PROMPT, {latent: alpha}, max_new_tokens=8)
    assert result.steered != result.baseline
    lens_tokens = {lm.tokenizer.decode([t]) for t in top.tolist()}
    assert any(token in lens_tokens for token in result.steered_tokens), (
        result.steered_tokens,
        lens_tokens,
    )
