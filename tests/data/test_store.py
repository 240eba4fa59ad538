"""ActivationStore: shuffling across sequences, full coverage, exact resume, device/dtype, errors."""

from __future__ import annotations

import json

import pytest
import torch

from saelab.data import ActivationStore, load_corpus

HOOK = "blocks.1.hook_resid_post"


class CountingSource:
    """Chunks of 100 rows; row value = (global row index, source context = row // 10)."""

    d_in = 2

    def __init__(self, n_chunks: int | None = None) -> None:
        self.n_chunks = n_chunks

    def describe(self) -> dict:
        return {"kind": "counting"}

    def chunks(self, start=None):
        index = start["chunk"] if start else 0
        while self.n_chunks is None or index < self.n_chunks:
            rows = torch.arange(index * 100, (index + 1) * 100, dtype=torch.float32)
            yield {"chunk": index}, torch.stack([rows, rows // 10], dim=1)
            index += 1


def test_batches_mix_many_sequences_and_cover_every_row_once():
    store = ActivationStore(CountingSource(n_chunks=5), batch_size=64, device="cpu")
    batches = list(store)
    assert [len(b) for b in batches] == [64] * 7 + [52]
    rows = torch.cat(batches)[:, 0]
    assert sorted(rows.tolist()) == list(range(500))
    assert len(set(batches[0][:, 1].tolist())) >= 6  # first batch: rows from >= 6 of 10 contexts
    assert not torch.equal(rows[:100], torch.arange(100.0))


def test_state_dict_restores_the_exact_next_batch_including_straddling_ones():
    store = ActivationStore(CountingSource(), batch_size=30, seed=3, device="cpu")
    for _ in range(3):  # 90 rows: the 4th batch straddles chunks 0 and 1
        next(store)
    state = json.loads(json.dumps(store.state_dict()))
    expected = [next(store) for _ in range(10)]
    restored = ActivationStore(CountingSource(), batch_size=30, seed=3, device="cpu")
    restored.load_state_dict(state)
    for a, b in zip(expected, (next(restored) for _ in range(10)), strict=True):
        assert torch.equal(a, b)
    assert restored.tokens_served == store.tokens_served


def test_state_from_another_seed_or_source_is_refused():
    state = ActivationStore(CountingSource(), batch_size=8, seed=1, device="cpu").state_dict()
    with pytest.raises(ValueError, match="seed"):
        ActivationStore(CountingSource(), batch_size=8, seed=2, device="cpu").load_state_dict(state)


def test_model_store_resume_is_exact(tiny_lm, text_corpus_dir):
    def make():
        return ActivationStore.from_model(
            tiny_lm, HOOK, load_corpus(text_corpus_dir), batch_size=100, context_size=32,
            buffer_tokens=256, model_batch_size=3, seed=5, device="cpu",
        )  # fmt: skip

    store = make()
    first = [next(store) for _ in range(7)]
    assert all(b.shape == (100, tiny_lm.d_model) and b.dtype == torch.float32 for b in first)
    state = store.state_dict()
    expected = [next(store) for _ in range(6)]
    restored = make()
    restored.load_state_dict(state)
    for a, b in zip(expected, (next(restored) for _ in range(6)), strict=True):
        assert torch.equal(a, b)


def test_model_store_stops_at_max_tokens_running_only_the_contexts_it_needs(
    tiny_lm, text_corpus_dir, monkeypatch
):
    contexts = []
    real = tiny_lm.activations
    monkeypatch.setattr(
        tiny_lm, "activations", lambda ids, hooks: contexts.append(len(ids)) or real(ids, hooks)
    )

    def make():
        return ActivationStore.from_model(
            tiny_lm, HOOK, load_corpus(text_corpus_dir), batch_size=100, context_size=32,
            buffer_tokens=320, model_batch_size=4, seed=5, max_tokens=450, device="cpu",
        )  # fmt: skip

    store = make()
    first = [next(store) for _ in range(2)]
    state = store.state_dict()
    rest = list(store)
    served = sum(len(b) for b in first + rest)
    # ≤ 31 tokens per context (BOS excluded): a chunk of 10 contexts, then 5, not another 10.
    assert 450 <= served < 450 + 32
    assert sum(contexts) == 15
    restored = make()
    restored.load_state_dict(state)
    for a, b in zip(rest, list(restored), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="max_tokens"):
        ActivationStore.from_model(tiny_lm, HOOK, load_corpus(text_corpus_dir), max_tokens=0)


def test_model_store_excludes_special_positions(tiny_lm, tmp_path):
    (tmp_path / "docs.txt").write_text(
        "\n\n".join(f"def f{i}(x):\n    return x * {i}" for i in range(40))
    )
    corpus = load_corpus(tmp_path)
    kwargs = {
        "batch_size": 10_000,
        "context_size": 32,
        "split": "all",
        "epochs": 1,
        "device": "cpu",
    }
    kept = sum(len(b) for b in ActivationStore.from_model(tiny_lm, HOOK, corpus, **kwargs))
    everything = sum(
        len(b)
        for b in ActivationStore.from_model(
            tiny_lm, HOOK, corpus, exclude_special_tokens=False, **kwargs
        )
    )
    n_contexts = everything // 32
    assert everything % 32 == 0
    assert everything - kept >= n_contexts  # at least every BOS is gone


def test_dtype_option():
    store = ActivationStore(CountingSource(), batch_size=4, device="cpu", dtype="bfloat16")
    assert next(store).dtype == torch.bfloat16


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        ActivationStore(CountingSource(), batch_size=0)


def test_batches_can_be_trained_on(tiny_lm, text_corpus_dir):
    store = ActivationStore.from_model(
        tiny_lm, HOOK, load_corpus(text_corpus_dir), batch_size=64, buffer_tokens=256, device="cpu"
    )
    weight = torch.randn(tiny_lm.d_model, 3, requires_grad=True)
    (next(store) @ weight).square().sum().backward()
    assert weight.grad is not None and not next(store).requires_grad
