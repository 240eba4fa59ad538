"""Held-out evaluation tokens: a budget spans many documents, and the whole split stays reachable."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from saelab.data import ContextStream, load_corpus, sae_token_mask, special_token_ids
from saelab.evals.tokens import EVAL_DOCUMENTS, document_tokens, heldout_batches


@pytest.fixture(scope="module")
def stdlib():
    return load_corpus("python-stdlib")


def _window_stream(tokenizer, seed: int, window: int, remainder: bool) -> ContextStream:
    return ContextStream(
        load_corpus("python-stdlib"), tokenizer, 2, seed=seed, split="heldout", epochs=1,
        document_tokens=window, remainder=remainder,
    )  # fmt: skip


@pytest.mark.parametrize("length", [1, 5, 6, 7, 40])
def test_a_window_and_its_remainder_partition_the_document(tiny_lm, length):
    document = np.arange(100, 100 + length, dtype=np.int64)
    tokens = np.concatenate([document, [-1]])  # -1: the separator
    for seed in range(20):
        inside = _window_stream(tiny_lm.tokenizer, seed, 6, False)._window(0, 3, tokens)
        outside = _window_stream(tiny_lm.tokenizer, seed, 6, True)._window(0, 3, tokens)
        body = inside[inside >= 0]
        assert len(body) == min(length, 6) and inside[-1] == -1
        start = int(body[0]) - 100
        assert body.tolist() == document[start : start + len(body)].tolist()  # contiguous
        assert sorted([*body.tolist(), *outside[outside >= 0].tolist()]) == document.tolist()
        again = _window_stream(tiny_lm.tokenizer, seed, 6, False)._window(0, 3, tokens)
        assert np.array_equal(inside, again)
    starts = {
        int(_window_stream(tiny_lm.tokenizer, seed, 6, False)._window(0, 3, tokens)[0])
        for seed in range(20)
    }
    assert len(starts) > (1 if length > 6 else 0)  # the seed moves the window


def test_a_small_budget_spans_many_held_out_documents(tiny_lm, stdlib):
    """With one token per context, each separator marks one more document (SPEC §3 eval set)."""
    tokenizer, budget = tiny_lm.tokenizer, 320
    assert document_tokens(budget, 2) == budget // EVAL_DOCUMENTS
    batches = heldout_batches(stdlib, tokenizer, budget, context_size=2, batch_size=64)
    packed = torch.cat([b[:, 1] for b in batches])
    plain_stream = ContextStream(stdlib, tokenizer, 2, split="heldout")
    plain = torch.cat([next(plain_stream)[1:] for _ in range(len(packed))])
    separator = tokenizer.eos_token_id
    assert int((packed == separator).sum()) >= EVAL_DOCUMENTS - 1
    assert int((plain == separator).sum()) < 5  # without windows: a handful of documents


def test_a_budget_larger_than_the_split_gets_every_held_out_token(tiny_lm, stdlib):
    tokenizer = tiny_lm.tokenizer
    special = special_token_ids(tokenizer)

    def counts(contexts) -> Counter:
        ids = torch.cat([c.reshape(-1, c.shape[-1]) for c in contexts])
        return Counter(ids[sae_token_mask(ids, special)].tolist())

    everything = counts(ContextStream(stdlib, tokenizer, 64, split="heldout", epochs=1))
    total = sum(everything.values())
    got = counts(heldout_batches(stdlib, tokenizer, 10 * total, context_size=64, batch_size=32))
    # Only each stream's incomplete last context is dropped (< 64 tokens each).
    assert sum((everything - got).values()) < 2 * 64
    assert sum((got - everything).values()) < 2 * 64
