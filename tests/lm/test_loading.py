"""load_model: local dirs, dtype/device options, cache dir override, and errors that name the input."""

from __future__ import annotations

import pytest
import torch

from saelab.lm import LanguageModel, ModelNotFoundError, load_model, user_cache_dir
from saelab.lm.dtypes import parse_dtype


def test_local_dir_loads_model_and_tokenizer(tiny_model):
    lm = load_model(tiny_model("llama"), device="cpu")
    assert isinstance(lm, LanguageModel)
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert lm.d_model == 64
    assert lm.tokenizer("def f():").input_ids
    assert lm.name == str(tiny_model("llama").resolve())


def test_dtype_option(tiny_model):
    lm = load_model(str(tiny_model("gpt2")), device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    acts = lm.activations(torch.tensor([[5, 6, 7]]), "blocks.0.hook_resid_post")
    assert acts["blocks.0.hook_resid_post"].dtype == torch.bfloat16


def test_bad_dtype_lists_valid_names():
    with pytest.raises(ValueError, match="float32"):
        parse_dtype("float64")


def test_unknown_model_name_lists_what_is_available():
    with pytest.raises(ModelNotFoundError) as error:
        load_model("no-such-org/no-such-model-xyz")
    message = str(error.value)
    assert "no-such-org/no-such-model-xyz" in message and "gemma-3-270m" in message


def test_missing_gguf_file_is_named(tmp_path):
    missing = tmp_path / "model.gguf"
    with pytest.raises(ModelNotFoundError, match=r"model\.gguf"):
        load_model(missing)


def test_directory_without_a_model_is_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        load_model(tmp_path)


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELAB_CACHE_DIR", str(tmp_path / "c"))
    assert user_cache_dir() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()
