"""Activation replacement, recording, shared-prefix forwards and head logits on every tiny family."""

from __future__ import annotations

import pytest
import torch

from saelab.lm import load_model, record_activations, replace_activation
from saelab.lm.hooks import HOOK_KINDS, decoder_layers, family_layout
from saelab.lm.logits import final_hidden_states, head_logits
from saelab.lm.prefix import SharedPrefix, prefix_depth


@pytest.fixture
def lm(tiny_model, family):
    return load_model(tiny_model(family), device="cpu")


def _ids(batch: int = 2, seq: int = 10) -> torch.Tensor:
    return torch.randint(3, 500, (batch, seq), generator=torch.Generator().manual_seed(1))


def _kinds(lm) -> list[str]:
    return sorted({name.split(".")[-1] for name in lm.hook_names()})


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(ids).logits


def test_head_logits_of_final_hidden_states_equal_hf_logits(lm):
    ids = _ids()
    with torch.no_grad():
        hidden = final_hidden_states(lm.model, ids)
        torch.testing.assert_close(head_logits(lm.model, hidden), _logits(lm, ids))


def test_replacement_changes_the_residual_stream_at_every_kind(lm):
    """fn(a) = a + v at a hook: the recorded value is clean + v and the residual sums still hold."""
    ids, v = _ids(), 0.5
    layer = 1
    next_pre = f"blocks.{layer + 1}.hook_resid_pre"
    names = [*(f"blocks.{layer}.{kind}" for kind in _kinds(lm)), next_pre]
    clean = lm.activations(ids, names)
    parallel = "hook_resid_mid" not in _kinds(lm)
    for kind in _kinds(lm):
        hook = f"blocks.{layer}.{kind}"
        with torch.no_grad(), replace_activation(lm.model, hook, lambda a: a + v):
            got = lm.activations(ids, names)
        torch.testing.assert_close(got[hook], clean[hook] + v, msg=hook)
        get = lambda k, got=got: got[f"blocks.{layer}.{k}"]  # noqa: E731
        if kind == "hook_resid_post":
            torch.testing.assert_close(got[next_pre], clean[hook] + v, msg=hook)
        elif parallel:
            total = get("hook_resid_pre") + get("hook_attn_out") + get("hook_mlp_out")
            torch.testing.assert_close(total, get("hook_resid_post"), msg=hook)
        else:
            mid = get("hook_resid_pre") + get("hook_attn_out")
            torch.testing.assert_close(mid, get("hook_resid_mid"), msg=hook)
            torch.testing.assert_close(mid + get("hook_mlp_out"), get("hook_resid_post"), msg=hook)


def test_identity_replacement_leaves_logits_unchanged(lm):
    ids = _ids()
    clean = _logits(lm, ids)
    for kind in _kinds(lm):
        with replace_activation(lm.model, f"blocks.2.{kind}", lambda a: a):
            torch.testing.assert_close(_logits(lm, ids), clean, msg=kind)


def test_language_model_method_and_bad_shapes(tiny_lm):
    ids = _ids()
    with tiny_lm.replace_activation("blocks.0.hook_resid_post", torch.zeros_like):
        zeroed = tiny_lm.activations(ids, "blocks.0.hook_resid_post")
    assert torch.count_nonzero(zeroed["blocks.0.hook_resid_post"]) == 0
    with (
        pytest.raises(ValueError, match=r"blocks\.0\.hook_mlp_out.*shape \(2, 10, 64\)"),
        tiny_lm.replace_activation("blocks.0.hook_mlp_out", lambda a: a[:, :1]),
    ):
        _logits(tiny_lm, ids)


def _hook_counts(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_after_an_exception(tiny_lm):
    ids = _ids()
    clean = _logits(tiny_lm, ids)
    before = _hook_counts(tiny_lm.model)
    for kind in HOOK_KINDS:
        with (
            pytest.raises(RuntimeError, match="boom"),
            replace_activation(tiny_lm.model, f"blocks.1.{kind}", torch.zeros_like),
        ):
            assert _hook_counts(tiny_lm.model) > before
            raise RuntimeError("boom")
        with (
            pytest.raises(RuntimeError, match="boom"),
            record_activations(tiny_lm.model, f"blocks.1.{kind}"),
        ):
            raise RuntimeError("boom")
    assert _hook_counts(tiny_lm.model) == before
    torch.testing.assert_close(_logits(tiny_lm, ids), clean, rtol=0, atol=0)


def test_record_activations_equal_the_stopping_capture(lm):
    ids = _ids()
    names = lm.hook_names()
    with torch.no_grad(), record_activations(lm.model, names) as recorded:
        lm.model(ids)
    expected = lm.activations(ids, names)
    assert list(recorded) == names
    for name in names:
        torch.testing.assert_close(recorded[name], expected[name], rtol=0, atol=0)


def _mlp_calls(layers) -> tuple[list[int], list]:
    """Counters of each layer's MLP calls (a skipped layer computes nothing inside), handles."""
    calls = [0] * len(layers)
    handles = [
        layer.get_submodule("mlp").register_forward_pre_hook(
            lambda *_, i=index: calls.__setitem__(i, calls[i] + 1)
        )
        for index, layer in enumerate(layers)
    ]
    return calls, handles


SHARED_PREFIX_HOOKS = (
    "blocks.0.hook_resid_pre",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_resid_mid",
    "blocks.2.hook_mlp_out",
    "blocks.2.hook_resid_post",
    "blocks.3.hook_resid_post",
)


def test_shared_prefix_equals_full_forwards_and_skips_early_layers(lm):
    kinds = _kinds(lm)
    ids, v = _ids(), torch.linspace(-1, 1, lm.d_model)
    steer = lambda a: a + v  # noqa: E731
    layers = decoder_layers(lm.model, family_layout(lm.model))
    with torch.no_grad():
        full_hidden = final_hidden_states(lm.model, ids)
    for hook in SHARED_PREFIX_HOOKS:
        if hook.split(".")[-1] not in kinds:
            continue  # parallel residual: no resid_mid
        expected_activation = lm.activations(ids, hook)[hook]
        with torch.no_grad():
            with replace_activation(lm.model, hook, steer):
                steered = final_hidden_states(lm.model, ids)
            shared = SharedPrefix(lm.model, hook)
            activation, hidden = shared.clean(ids)
            calls, handles = _mlp_calls(layers)
            replaced = shared.replaced(steer)
            again = shared.replaced(lambda a: a)
            for handle in handles:
                handle.remove()
        torch.testing.assert_close(hidden, full_hidden, rtol=0, atol=0, msg=hook)
        torch.testing.assert_close(activation, expected_activation, rtol=0, atol=0, msg=hook)
        torch.testing.assert_close(replaced, steered, msg=hook)
        torch.testing.assert_close(again, full_hidden, msg=hook)
        depth = prefix_depth(lm.model, hook)
        assert depth == int(hook.split(".")[1]) + hook.endswith("resid_post")
        assert calls == [0] * depth + [2] * (len(calls) - depth), hook
        assert all("forward" not in vars(layer) for layer in layers)  # the swap is undone
