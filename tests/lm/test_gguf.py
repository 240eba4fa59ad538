"""GGUF files: converted once into the cache dir, loaded from safetensors afterwards, same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.lm import gguf as gguf_module
from saelab.lm import load_model

pytest.importorskip("gguf", reason="needs the saelab[gemma] extra")

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _llama_cpp_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The q/k row order llama.cpp's converter writes (transformers undoes it on load)."""
    shape = weight.shape
    return (
        weight.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def write_tiny_gguf(model: torch.nn.Module, tokenizer: object, path: Path) -> Path:
    """Write a float32 llama GGUF (weights + byte-level BPE tokenizer) of a tiny HF llama."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [token for token, _ in sorted(spec["vocab"].items(), key=lambda item: item[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in tokenizer.all_special_tokens else 1 for token in tokens])
    writer.add_token_merges([" ".join(merge) for merge in spec["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in _LAYER_NAMES.items():
            names[f"model.layers.{layer}.{hf_name}"] = f"blk.{layer}.{gguf_name}"
    for name, tensor in model.state_dict().items():
        array = tensor.numpy()
        if name.endswith("q_proj.weight"):
            array = _llama_cpp_permute(array, config.num_attention_heads)
        if name.endswith("k_proj.weight"):
            array = _llama_cpp_permute(array, config.num_key_value_heads)
        writer.add_tensor(names[name], np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tiny_model, tmp_path, monkeypatch) -> tuple[Path, object]:
    """(path of a tiny llama .gguf, the HF model it came from), with a fresh saelab cache dir."""
    monkeypatch.setenv("SAELAB_CACHE_DIR", str(tmp_path / "cache"))
    reference = load_model(tiny_model("llama"), device="cpu")
    folder = tmp_path / "gguf"
    folder.mkdir()
    path = write_tiny_gguf(reference.model, reference.tokenizer, folder / "tiny-llama.gguf")
    return path, reference


def test_gguf_file_loads_with_the_same_weights(tiny_gguf):
    path, reference = tiny_gguf
    lm = load_model(path, device="cpu")
    ids = torch.tensor([reference.tokenizer("def f(x):\n    return x").input_ids])
    assert lm.tokenizer("def f(x):\n    return x").input_ids == ids[0].tolist()
    hook = "blocks.2.hook_resid_post"
    torch.testing.assert_close(
        lm.activations(ids, hook)[hook], reference.activations(ids, hook)[hook]
    )


def test_gguf_is_converted_once_then_read_from_the_cache(tiny_gguf, monkeypatch):
    path, _ = tiny_gguf
    load_model(path, device="cpu")
    converted = list((Path(gguf_module.user_cache_dir()) / "models").iterdir())
    assert [entry.name.startswith("tiny-llama-") for entry in converted] == [True]
    assert (converted[0] / "model.safetensors").is_file()

    monkeypatch.setattr(
        "transformers.AutoModelForCausalLM.from_pretrained", _only_from(converted[0])
    )
    load_model(path.parent, device="cpu")  # a folder holding exactly one .gguf resolves to it


def _only_from(folder: Path):
    """A from_pretrained stand-in that asserts it is asked for the converted folder."""
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained

    def from_pretrained(source, *args, **kwargs):
        assert "gguf_file" not in kwargs and Path(source) == folder
        return original(source, *args, **kwargs)

    return from_pretrained
