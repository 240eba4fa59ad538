"""Evaluation tokens: packed contexts from a corpus's held-out split, up to a token budget."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from saelab.data import ContextStream, Corpus, sae_token_mask, special_token_ids


def heldout_batches(
    corpus: Corpus,
    tokenizer: object,
    tokens: int,
    *,
    context_size: int,
    batch_size: int,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """(k, context_size) batches of held-out contexts until they hold ≥ `tokens` SAE positions.

    SAE positions exclude BOS/EOS/pad; the last batch is cut to the contexts needed. Stops early
    (with fewer tokens) when the held-out split is exhausted after one pass.
    """
    if tokens < 1 or batch_size < 1:
        raise ValueError(f"tokens and batch_size must be ≥ 1, got {tokens} and {batch_size}.")
    stream = ContextStream(corpus, tokenizer, context_size, seed=seed, split="heldout", epochs=1)
    return _budgeted(stream, special_token_ids(tokenizer), tokens, batch_size)


def _budgeted(
    stream: ContextStream, special: list[int], tokens: int, batch_size: int
) -> Iterator[torch.Tensor]:
    """Batches of `stream` until they hold ≥ `tokens` SAE positions (the last one cut)."""
    remaining = tokens
    while remaining > 0:
        try:
            batch = stream.next_batch(batch_size)
        except StopIteration:
            return
        per_context = sae_token_mask(batch, special).sum(1)
        needed = int((per_context.cumsum(0) < remaining).sum()) + 1
        batch = batch[:needed]
        remaining -= int(per_context[:needed].sum())
        yield batch
