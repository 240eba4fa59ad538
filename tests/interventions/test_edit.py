"""Steering, clamping and ablation at an SAE's hook, checked against direct computations."""

from __future__ import annotations

import pytest
import torch

from saelab.interventions import edit_activation, latent_intervention, steer
from saelab.interventions.steering import encode_prompt
from saelab.lm import load_model, record_activations

HOOK = "blocks.1.hook_resid_post"  # the sae fixture's hook (tests/interventions/conftest.py)
NEXT = "blocks.2.hook_resid_pre"  # the input of the next layer = the (edited) resid_post
PROMPT = "def heappush(heap, item):\n    heap.append(item)"


def hook_counts(model) -> int:
    """Number of forward hooks and pre-hooks left on any submodule."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(ids).logits


def _edited(lm, sae, ids, latents, mode, from_position=None):
    """(logits, recorded next-layer input) with the intervention active."""
    with (
        torch.no_grad(),
        latent_intervention(lm, sae, HOOK, latents, mode=mode, from_position=from_position),
        record_activations(lm.model, NEXT) as recorded,
    ):
        logits = lm.model(ids).logits
    return logits, recorded[NEXT]


def _clean_hook(lm, ids):
    return lm.activations(ids, HOOK)[HOOK]


def test_zero_strength_leaves_logits_unchanged(tiny_lm, sae):
    ids = encode_prompt(tiny_lm, PROMPT)
    logits, _ = _edited(tiny_lm, sae, ids, {3: 0.0, 17: 0.0}, "add")
    torch.testing.assert_close(logits, _logits(tiny_lm, ids), rtol=0, atol=0)


def test_add_is_x_plus_weighted_decoder_rows_except_at_bos(tiny_lm, sae):
    ids = encode_prompt(tiny_lm, PROMPT)
    x = _clean_hook(tiny_lm, ids)
    _, got = _edited(tiny_lm, sae, ids, {3: 2.0, 17: -1.5}, "add")
    expected = x + 2.0 * sae.W_dec[3] - 1.5 * sae.W_dec[17]
    expected[:, 0] = x[:, 0]  # BOS keeps its clean activation
    torch.testing.assert_close(got, expected.detach())


def test_clamp_to_current_value_leaves_logits_unchanged(tiny_lm, sae):
    ids = encode_prompt(tiny_lm, PROMPT)
    last = ids.shape[1] - 1
    f = sae.encode(_clean_hook(tiny_lm, ids)).detach()
    latent = int(f[0, last].argmax())
    assert f[0, last, latent] > 0
    logits, _ = _edited(
        tiny_lm, sae, ids, {latent: float(f[0, last, latent])}, "clamp", from_position=last
    )
    torch.testing.assert_close(logits, _logits(tiny_lm, ids), rtol=1e-5, atol=1e-5)


def test_clamp_changes_only_that_latent_by_the_requested_amount(tiny_lm, sae):
    ids = encode_prompt(tiny_lm, PROMPT)
    x = _clean_hook(tiny_lm, ids)
    f = sae.encode(x).detach()
    latent, value = 5, 7.0
    logits, got = _edited(tiny_lm, sae, ids, {latent: value}, "clamp", from_position=4)
    expected = x.clone()
    expected[:, 4:] += (value - f[:, 4:, latent, None]) * sae.W_dec[latent]
    torch.testing.assert_close(got, expected.detach())
    # the error term is kept: re-encoding the edited activation moves latent i to ~value
    torch.testing.assert_close(logits[:, :4], _logits(tiny_lm, ids)[:, :4])


def test_ablating_all_latents_gives_decode_of_zero_plus_error(tiny_lm, sae):
    ids = encode_prompt(tiny_lm, PROMPT)
    x = _clean_hook(tiny_lm, ids)
    everything = dict.fromkeys(range(sae.cfg.d_sae), 0.0)
    _, got = _edited(tiny_lm, sae, ids, everything, "ablate")
    with torch.no_grad():
        error = x - sae(x)
        expected = sae.decode(torch.zeros(*x.shape[:-1], sae.cfg.d_sae)) + error
    expected[:, 0] = x[:, 0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_ablating_equals_clamping_to_zero(tiny_lm, sae):
    ids = encode_prompt(tiny_lm, PROMPT)
    ablated, _ = _edited(tiny_lm, sae, ids, {1: 0.0, 9: 0.0}, "ablate")
    clamped, _ = _edited(tiny_lm, sae, ids, {1: 0.0, 9: 0.0}, "clamp")
    torch.testing.assert_close(ablated, clamped, rtol=0, atol=0)


def test_edit_activation_matches_sae_in_the_loop(sae):
    x = torch.randn(6, sae.cfg.d_in, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = sae.encode(x)
        f_new = f.clone()
        f_new[:, 2], f_new[:, 40] = 3.0, 0.5
        expected = sae.decode(f_new) + (x - sae.decode(f))
        got = edit_activation(sae, x, {2: 3.0, 40: 0.5}, "clamp")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_hooks_are_removed_after_an_exception(tiny_lm, sae, monkeypatch):
    assert hook_counts(tiny_lm.model) == 0
    with pytest.raises(RuntimeError, match="boom"), latent_intervention(tiny_lm, sae, HOOK, {0: 1}):
        assert hook_counts(tiny_lm.model) > 0
        raise RuntimeError("boom")
    assert hook_counts(tiny_lm.model) == 0

    def broken(_x):
        raise RuntimeError("encode failed")

    monkeypatch.setattr(sae, "encode", broken)
    with pytest.raises(RuntimeError, match="encode failed"):
        steer(tiny_lm, sae, HOOK, PROMPT, {0: 1.0}, mode="clamp", max_new_tokens=3)
    assert hook_counts(tiny_lm.model) == 0


def test_bad_latent_and_mode_are_reported(tiny_lm, sae):
    with pytest.raises(ValueError, match=r"Latent index 128 .* valid 0 … 127"):
        steer(tiny_lm, sae, HOOK, PROMPT, {128: 1.0})
    with pytest.raises(ValueError, match="mode 'scale'; valid: add, clamp, ablate"):
        steer(tiny_lm, sae, HOOK, PROMPT, {1: 1.0}, mode="scale")


def test_steer_with_zero_strength_reproduces_the_baseline(tiny_lm, sae):
    result = steer(tiny_lm, sae, HOOK, PROMPT, {3: 0.0}, max_new_tokens=8)
    assert result.baseline == result.steered
    assert len(result.baseline_tokens) == 8
    strong = steer(tiny_lm, sae, HOOK, PROMPT, {3: 50.0}, max_new_tokens=8)
    assert strong.baseline == result.baseline
    assert strong.steered_tokens != strong.baseline_tokens


@pytest.mark.parametrize("from_position", [None, 3, 45])
def test_from_position_tracks_absolute_positions_in_cached_generation(tiny_model, from_position):
    """gemma3 (sliding window 32): a prompt of > 32 tokens and 12 cached decoding steps; each
    generated token must be the argmax of one uncached forward with the same edit."""
    import saelab

    lm = load_model(tiny_model("gemma3"), device="cpu")
    hook = "blocks.2.hook_resid_post"
    sae = saelab.create_sae("jumprelu", d_in=lm.d_model, d_sae=64, seed=1).eval()
    ids = encode_prompt(lm, PROMPT * 3)[:, :40]
    latents = {7: 30.0}
    with (
        torch.no_grad(),
        latent_intervention(lm, sae, hook, latents, from_position=from_position),
    ):
        out = lm.model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
        logits = lm.model(out, use_cache=False).logits
    new = out[0, ids.shape[1] :]
    assert logits[0, ids.shape[1] - 1 : -1].argmax(-1).tolist() == new.tolist()
    clean = lm.model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert clean[0, ids.shape[1] :].tolist() != new.tolist()
