"""Hook points on tiny models of every family: values match HF hidden states; forward stops early."""

from __future__ import annotations

import pytest
import torch

from saelab.lm import HookNotFoundError, load_model
from saelab.lm.hooks import HOOK_KINDS, decoder_layers, family_layout

N_LAYERS = 4


@pytest.fixture
def lm(tiny_model, family):
    return load_model(tiny_model(family), device="cpu")


def _input_ids(batch: int = 2, seq: int = 12) -> torch.Tensor:
    return torch.randint(3, 500, (batch, seq), generator=torch.Generator().manual_seed(0))


def test_resid_hooks_equal_hf_hidden_states(lm):
    ids = _input_ids()
    names = [
        f"blocks.{layer}.{kind}"
        for layer in range(N_LAYERS)
        for kind in ("hook_resid_pre", "hook_resid_post")
    ]
    acts = lm.activations(ids, names)
    with torch.no_grad():
        hidden = lm.model(ids, output_hidden_states=True).hidden_states
    assert len(hidden) == N_LAYERS + 1
    for layer in range(N_LAYERS):
        assert acts[f"blocks.{layer}.hook_resid_pre"].shape == (2, 12, lm.d_model)
        torch.testing.assert_close(
            acts[f"blocks.{layer}.hook_resid_pre"], hidden[layer], rtol=0, atol=0
        )
    # HF's last hidden state has the final norm applied, so resid_post of the last layer has no twin.
    for layer in range(N_LAYERS - 1):
        torch.testing.assert_close(
            acts[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1], rtol=0, atol=0
        )


def test_attn_and_mlp_outputs_add_up_to_the_residual_stream(lm):
    acts = lm.activations(_input_ids(), lm.hook_names())
    for layer in range(N_LAYERS):
        get = lambda kind, layer=layer: acts[f"blocks.{layer}.{kind}"]  # noqa: E731
        if "hook_resid_mid" in {name.split(".")[-1] for name in acts}:
            torch.testing.assert_close(
                get("hook_resid_pre") + get("hook_attn_out"), get("hook_resid_mid")
            )
            torch.testing.assert_close(
                get("hook_resid_mid") + get("hook_mlp_out"), get("hook_resid_post")
            )
        else:  # parallel attention + MLP (Pythia)
            total = get("hook_resid_pre") + get("hook_attn_out") + get("hook_mlp_out")
            torch.testing.assert_close(total, get("hook_resid_post"))


def test_mlp_in_is_what_the_mlp_reads(lm):
    """hook_mlp_in through the MLP (and Gemma's post-norm) gives hook_mlp_out: a transcoder's pair."""
    acts = lm.activations(_input_ids(), lm.hook_names())
    layout = family_layout(lm.model)
    with torch.no_grad():
        for layer, block in enumerate(decoder_layers(lm.model, layout)):
            out = block.get_submodule(layout.mlp)(acts[f"blocks.{layer}.hook_mlp_in"])
            if layout.mlp_out != layout.mlp:
                out = block.get_submodule(layout.mlp_out)(out)
            torch.testing.assert_close(out, acts[f"blocks.{layer}.hook_mlp_out"])


def test_hook_names_cover_every_layer_and_kind(lm):
    names = lm.hook_names()
    kinds = {name.split(".", 2)[2] for name in names}
    parallel = getattr(lm.model.config, "use_parallel_residual", False)
    assert kinds == set(HOOK_KINDS) - ({"hook_resid_mid"} if parallel else set())
    assert len(names) == N_LAYERS * len(kinds)


def _count_calls(lm) -> dict[str, list[int]]:
    """Attach counters to every decoder layer, each layer's MLP, and the LM head."""
    counts = {"layers": [0] * N_LAYERS, "mlps": [0] * N_LAYERS, "head": [0]}
    layout = family_layout(lm.model)
    for index, layer in enumerate(decoder_layers(lm.model, layout)):
        layer.register_forward_hook(
            lambda *_, i=index: counts["layers"].__setitem__(i, counts["layers"][i] + 1)
        )
        mlp = layer.get_submodule("mlp")
        mlp.register_forward_hook(
            lambda *_, i=index: counts["mlps"].__setitem__(i, counts["mlps"][i] + 1)
        )
    lm.model.get_output_embeddings().register_forward_hook(
        lambda *_: counts["head"].__setitem__(0, counts["head"][0] + 1)
    )
    return counts


def test_forward_stops_after_the_deepest_hook(lm):
    counts = _count_calls(lm)
    lm.activations(_input_ids(), ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
    assert counts["layers"] == [1, 1, 0, 0]
    assert counts["head"] == [0]


def test_resid_pre_does_not_run_its_own_layer(lm):
    counts = _count_calls(lm)
    lm.activations(_input_ids(), "blocks.2.hook_resid_pre")
    assert counts["layers"] == [1, 1, 0, 0]
    assert counts["mlps"] == [1, 1, 0, 0]


def test_attn_out_skips_the_rest_of_a_sequential_layer(lm):
    if getattr(lm.model.config, "use_parallel_residual", False):
        pytest.skip("parallel attention + MLP: the MLP runs in the same block expression")
    counts = _count_calls(lm)
    lm.activations(_input_ids(), "blocks.1.hook_attn_out")
    assert counts["mlps"] == [1, 0, 0, 0]


def test_many_hooks_come_from_one_forward_pass(lm):
    calls = [0]
    lm.model.get_input_embeddings().register_forward_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1)
    )
    acts = lm.activations(
        _input_ids(), ["blocks.3.hook_mlp_out", "blocks.0.hook_attn_out", "blocks.2.hook_resid_pre"]
    )
    assert calls == [1]
    assert list(acts) == [
        "blocks.3.hook_mlp_out",
        "blocks.0.hook_attn_out",
        "blocks.2.hook_resid_pre",
    ]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("blocks.99.hook_resid_post", "available: blocks.{0..3}"),
        ("blocks.1.hook_resid", "hook_resid_pre"),
        ("resid_post", "blocks.<layer>.<kind>"),
    ],
)
def test_unknown_hook_names_list_the_valid_ones(tiny_model, name, fragment):
    lm = load_model(tiny_model("llama"), device="cpu")
    with pytest.raises(HookNotFoundError) as error:
        lm.activations(_input_ids(), name)
    assert name in str(error.value) and fragment in str(error.value)


def test_pythia_style_models_have_no_resid_mid(tiny_model):
    lm = load_model(tiny_model("gpt_neox"), device="cpu")
    with pytest.raises(HookNotFoundError, match="hook_resid_mid"):
        lm.activations(_input_ids(), "blocks.0.hook_resid_mid")
