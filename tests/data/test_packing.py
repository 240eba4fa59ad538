"""Tokenise & pack: BOS first, documents joined by EOS, resumable positions, special-token masks."""

from __future__ import annotations

import itertools

import pytest
import torch

from saelab.data import ContextStream, load_corpus, sae_token_mask, special_token_ids
from saelab.lm import load_model


@pytest.fixture(scope="module")
def tokenizer(tiny_lm):
    return tiny_lm.tokenizer


def _stream(corpus_dir, tokenizer, **kwargs):
    options = {"context_size": 16, "split": "all", "epochs": 1} | kwargs
    size = options.pop("context_size")
    return ContextStream(load_corpus(corpus_dir), tokenizer, size, **options)


def test_contexts_start_with_bos_and_concatenate_to_the_document_stream(text_corpus_dir, tokenizer):
    contexts = list(_stream(text_corpus_dir, tokenizer))
    assert contexts and all(c.shape == (16,) and c.dtype == torch.int64 for c in contexts)
    assert all(c[0].item() == tokenizer.bos_token_id for c in contexts)
    packed = torch.cat([c[1:] for c in contexts]).tolist()
    docs = load_corpus(text_corpus_dir).documents(split="all")
    expected = [
        t
        for doc in docs
        for t in [*tokenizer(doc, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    ]
    assert packed == expected[: len(packed)]
    assert len(expected) - len(packed) < 15  # only the incomplete last context is dropped


def test_restarting_at_a_position_continues_exactly(text_corpus_dir, tokenizer):
    per_epoch = len(list(_stream(text_corpus_dir, tokenizer)))
    stream = _stream(text_corpus_dir, tokenizer, epochs=None)
    for _ in range(per_epoch - 20):
        next(stream)
    position = stream.position
    expected = [next(stream) for _ in range(50)]  # crosses into the second epoch
    resumed = _stream(text_corpus_dir, tokenizer, epochs=None, start=position)
    assert all(
        torch.equal(a, b) for a, b in zip(expected, (next(resumed) for _ in range(50)), strict=True)
    )
    assert stream.position.epoch >= 1


def test_next_batch_stacks_and_stops(text_corpus_dir, tokenizer):
    stream = _stream(text_corpus_dir, tokenizer)
    total = len(list(_stream(text_corpus_dir, tokenizer)))
    sizes = []
    while True:
        try:
            sizes.append(len(stream.next_batch(7)))
        except StopIteration:
            break
    assert sum(sizes) == total and set(sizes[:-1]) == {7}


def test_seed_changes_the_order(tokenizer):
    corpus = load_corpus("python-stdlib")
    first = [next(ContextStream(corpus, tokenizer, 32, seed=seed)) for seed in (0, 0, 1)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


def test_special_positions_are_masked(text_corpus_dir, tokenizer):
    batch = _stream(text_corpus_dir, tokenizer, context_size=64).next_batch(8)
    excluded = special_token_ids(tokenizer)
    assert set(excluded) == {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    mask = sae_token_mask(batch, excluded)
    assert not mask[:, 0].any()
    assert not mask[batch == tokenizer.eos_token_id].any()
    assert (batch == tokenizer.eos_token_id).any()
    assert mask.sum() == (~torch.isin(batch, torch.tensor(excluded))).sum()
    assert sae_token_mask(batch, []).all()


def test_tokenizer_without_bos_starts_contexts_with_eos(tiny_model, text_corpus_dir):
    tokenizer = load_model(tiny_model("qwen2"), device="cpu").tokenizer
    assert tokenizer.bos_token_id is None
    context = next(_stream(text_corpus_dir, tokenizer))
    assert context[0].item() == tokenizer.eos_token_id


def test_empty_split_is_an_error(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("only one document\n")
    corpus = load_corpus(tmp_path, heldout_fraction=0.0)
    with pytest.raises(ValueError, match="no non-empty documents in split 'heldout'"):
        next(ContextStream(corpus, tokenizer, 8, split="heldout"))


def test_context_size_must_fit_bos_and_text(text_corpus_dir, tokenizer):
    with pytest.raises(ValueError, match="context_size"):
        _stream(text_corpus_dir, tokenizer, context_size=1)


def test_long_documents_span_contexts(tokenizer):
    stream = ContextStream(load_corpus("python-stdlib"), tokenizer, 8)
    contexts = list(itertools.islice(stream, 10))
    assert stream.position.document == 0 and stream.position.token == 70
    assert all(len(c) == 8 for c in contexts)


def test_long_documents_are_tokenised_in_line_pieces(tmp_path, tokenizer):
    from saelab.data.packing import _split_lines

    text = "".join(f"line {i} " + "x" * (i % 97) + "\n" for i in range(3000))
    pieces = list(_split_lines(text, 10_000))
    assert "".join(pieces) == text and all(len(p) <= 10_000 and p.endswith("\n") for p in pieces)
    (tmp_path / "long.txt").write_text(text)
    stream = ContextStream(load_corpus(tmp_path), tokenizer, 64, split="all", epochs=1)
    packed = torch.cat([c[1:] for c in stream]).tolist()
    assert len(packed) > 10_000 and tokenizer.decode(packed).startswith(text[:1000])
