"""Integration: the built-in gemma-3-270m alias (PyPI package -> cached safetensors -> hooks)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gemma, pytest.mark.slow]


def test_loads_from_the_package_and_the_second_load_is_5x_faster(gemma):
    lm = gemma["model"]
    assert lm.name == "gemma-3-270m" and lm.model.config.model_type == "gemma3_text"
    assert lm.d_model == 640 and len(lm.hook_names()) == 18 * 6
    assert gemma["first_s"] >= 5 * gemma["second_s"], gemma


def test_hooks_match_hidden_states_and_stop_early(gemma):
    lm = gemma["model"]
    ids = lm.tokenizer("def add(a, b):\n    return a + b\n", return_tensors="pt").input_ids
    assert ids[0, 0].item() == lm.tokenizer.bos_token_id
    acts = lm.activations(ids, ["blocks.6.hook_resid_post", "blocks.6.hook_resid_pre"])
    with torch.no_grad():
        hidden = lm.model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts["blocks.6.hook_resid_post"], hidden[7], rtol=0, atol=0)
    torch.testing.assert_close(acts["blocks.6.hook_resid_pre"], hidden[6], rtol=0, atol=0)
