"""Steering, clamping and ablation at an SAE's hook, checked against direct computations."""

from __future__ import annotations

import inspect

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


# Cached generation: gemma3 with a sliding window (8) shorter than the prompt (20 tokens) and than
# the 12 generated tokens, so its sliding cache layers wrap, plus one full-attention layer as in
# the real model; llama and gpt2 with ordinary caches. Each under a dynamic and a static cache.
CACHED_FAMILIES = ("gemma3", "llama", "gpt2")
GEMMA3_LAYER_TYPES = ["sliding_attention"] * 3 + ["full_attention"]
PROMPT_TOKENS, NEW_TOKENS = 20, 12
CACHED_HOOK = "blocks.2.hook_resid_post"
STEER = {7: 30.0}
# Cached and uncached forwards sum the same fp32 terms in different orders (attention over ≤ 32
# keys, matmuls over d_model = 64 and d_ff = 128, in each of 4 layers, then the unembedding over
# 64): each logit moves by at most about n_terms·eps32 relative to the logits' size (~1).
TOLERANCE = (4 * (32 + 64 + 128) + 64) * torch.finfo(torch.float32).eps


def _sliding_gemma3(tiny_model, tmp_path_factory):
    """Tiny gemma3 with sliding window 8 and layer types GEMMA3_LAYER_TYPES, saved to a new dir."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = tiny_model("gemma3", sliding_window=8)
    config = AutoConfig.from_pretrained(source)
    config.layer_types = GEMMA3_LAYER_TYPES
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-gemma3-hybrid")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=CACHED_FAMILIES)
def cached_lm(request, tiny_model, tmp_path_factory):
    """(family, tiny LanguageModel, random JumpReLU SAE at CACHED_HOOK)."""
    import saelab

    family = request.param
    path = (
        _sliding_gemma3(tiny_model, tmp_path_factory) if family == "gemma3" else tiny_model(family)
    )
    lm = load_model(path, device="cpu")
    assert family != "gemma3" or lm.model.config.layer_types == GEMMA3_LAYER_TYPES
    sae = saelab.create_sae("jumprelu", d_in=lm.d_model, d_sae=64, seed=1).eval()
    return family, lm, sae


def _steered_generation(lm, sae, ids, from_position, **generate_kwargs):
    """(sequences, logits of each generated token (batch, NEW_TOKENS, vocab)) under the edit."""
    with (
        torch.no_grad(),
        latent_intervention(lm, sae, CACHED_HOOK, STEER, from_position=from_position),
    ):
        out = lm.model.generate(
            ids,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **generate_kwargs,
        )
    return out.sequences, torch.stack(out.logits, dim=1)


def _steered_uncached(lm, sae, ids, from_position):
    """Logits of one uncached forward of ids (1, seq) under the edit (positions 0 … seq − 1)."""
    with (
        torch.no_grad(),
        latent_intervention(lm, sae, CACHED_HOOK, STEER, from_position=from_position),
    ):
        return lm.model(ids, use_cache=False).logits


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("from_position", [None, 3, 25])
def test_from_position_tracks_absolute_positions_in_cached_generation(
    cached_lm, cache_implementation, from_position
):
    """Each cached decoding step gives the logits of one uncached forward of the whole sequence
    with the same edit, so the steered generation is the uncached one."""
    _family, lm, sae = cached_lm
    ids = encode_prompt(lm, PROMPT * 3)[:, :PROMPT_TOKENS]
    out, logits = _steered_generation(
        lm, sae, ids, from_position, cache_implementation=cache_implementation
    )
    full = _steered_uncached(lm, sae, out, from_position)[:, PROMPT_TOKENS - 1 : -1]
    torch.testing.assert_close(logits, full, rtol=TOLERANCE, atol=TOLERANCE)
    assert full.argmax(-1).tolist() == out[:, PROMPT_TOKENS:].tolist()
    # the edit starts where asked: logits predicted from positions before from_position are clean
    clean = _logits(lm, out)[:, PROMPT_TOKENS - 1 : -1]
    first_edited = max(from_position or 0, PROMPT_TOKENS - 1) - (PROMPT_TOKENS - 1)
    torch.testing.assert_close(
        logits[:, :first_edited], clean[:, :first_edited], rtol=TOLERANCE, atol=TOLERANCE
    )
    assert (logits[:, first_edited:] - clean[:, first_edited:]).abs().amax(-1).min() > 0.01


def test_from_position_counts_each_sequence_from_its_first_token_under_left_padding(cached_lm):
    """A left-padded batch is edited as each prompt alone: from_position counts the model's
    position ids (built from the attention mask), not the padded column index."""
    _family, lm, sae = cached_lm
    ids = encode_prompt(lm, PROMPT * 3)
    lengths, from_position = (PROMPT_TOKENS, PROMPT_TOKENS - 6), PROMPT_TOKENS - 2
    pad = lm.tokenizer.pad_token_id
    padded = torch.full((2, PROMPT_TOKENS), pad)
    mask = torch.zeros_like(padded)
    for row, length in enumerate(lengths):
        padded[row, PROMPT_TOKENS - length :] = ids[0, :length]
        mask[row, PROMPT_TOKENS - length :] = 1
    out, logits = _steered_generation(
        lm, sae, padded, from_position, attention_mask=mask, pad_token_id=pad
    )
    for row, length in enumerate(lengths):
        alone = out[row : row + 1, PROMPT_TOKENS - length :]
        full = _steered_uncached(lm, sae, alone, from_position)[:, length - 1 : -1]
        torch.testing.assert_close(logits[row : row + 1], full, rtol=TOLERANCE, atol=TOLERANCE)


def test_from_position_follows_a_cache_passed_without_positions(cached_lm):
    """A hand-written decoding loop passes only the cache; positions then start at its length,
    as the model's own do."""
    from transformers import DynamicCache

    _family, lm, sae = cached_lm
    ids = encode_prompt(lm, PROMPT * 3)[:, :PROMPT_TOKENS]
    name = (
        "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
    )
    cache = DynamicCache(config=lm.model.config)
    from_position = PROMPT_TOKENS - 4
    with (
        torch.no_grad(),
        latent_intervention(lm, sae, CACHED_HOOK, STEER, from_position=from_position),
    ):
        steps = [lm.model(ids[:, :8], use_cache=True, **{name: cache}).logits]
        steps += [
            lm.model(ids[:, t : t + 1], use_cache=True, **{name: cache}).logits
            for t in range(8, PROMPT_TOKENS)
        ]
    full = _steered_uncached(lm, sae, ids, from_position)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=TOLERANCE, atol=TOLERANCE)


MLP_IN, MLP_OUT = "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"


@pytest.mark.parametrize("mode", ["ablate", "clamp"])
def test_a_transcoder_edits_its_target_with_codes_from_its_input(tiny_lm, mode):
    """SPEC §2.6: y' = y + (f'(x) − f(x)) W_dec with x at mlp_in, written at mlp_out."""
    import saelab

    sae = saelab.create_sae(
        "topk", tiny_lm.d_model, 128, k=16, seed=0, d_out=tiny_lm.d_model,
        hook_name=MLP_IN, target_hook_name=MLP_OUT,
    ).eval()  # fmt: skip
    ids = encode_prompt(tiny_lm, PROMPT)
    clean = tiny_lm.activations(ids, [MLP_IN, MLP_OUT])
    f = sae.encode(clean[MLP_IN]).detach()
    latent = int(f[0, 1:].sum(0).argmax())  # one that fires on this prompt
    value = 3.0
    with (
        torch.no_grad(),
        latent_intervention(tiny_lm, sae, MLP_IN, {latent: value}, mode=mode),
        record_activations(tiny_lm.model, [MLP_IN, MLP_OUT]) as recorded,
    ):
        tiny_lm.model(ids)
    target = (
        torch.zeros_like(f[..., latent])
        if mode == "ablate"
        else torch.full_like(f[..., latent], value)
    )
    expected = clean[MLP_OUT] + (target - f[..., latent])[..., None] * sae.W_dec[latent].detach()
    expected[:, 0] = clean[MLP_OUT][:, 0]  # BOS keeps its clean activation
    torch.testing.assert_close(recorded[MLP_IN], clean[MLP_IN])  # the input is not touched
    torch.testing.assert_close(recorded[MLP_OUT], expected)
    assert hook_counts(tiny_lm.model) == 0
