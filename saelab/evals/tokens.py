"""Evaluation tokens: packed contexts from a corpus's held-out split, up to a token budget."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from saelab.data import ContextStream, Corpus, sae_token_mask, special_token_ids

# An evaluation budget is spread over at least this many held-out documents (one window each),
# so a few thousand tokens measure the SAE on many texts rather than on two or three long files.
EVAL_DOCUMENTS = 32


def document_tokens(tokens: int, context_size: int) -> int:
    """Tokens each held-out document contributes to a `tokens` budget (≥ one context)."""
    return max(context_size, -(-tokens // EVAL_DOCUMENTS))


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

    Each document contributes one window of `document_tokens(tokens, context_size)` tokens at a
    seeded offset; if the budget outlasts those windows, the documents' remaining tokens follow.
    SAE positions exclude BOS/EOS/pad; the last batch is cut to the contexts needed. Stops early
    (with fewer tokens) when the whole held-out split is used.
    """
    if tokens < 1 or batch_size < 1:
        raise ValueError(f"tokens and batch_size must be ≥ 1, got {tokens} and {batch_size}.")
    options = {"seed": seed, "split": "heldout", "epochs": 1}
    options["document_tokens"] = document_tokens(tokens, context_size)
    streams = [
        ContextStream(corpus, tokenizer, context_size, remainder=remainder, **options)
        for remainder in (False, True)
    ]
    return _budgeted(streams, special_token_ids(tokenizer), tokens, batch_size)


def _budgeted(
    streams: list[ContextStream], special: list[int], tokens: int, batch_size: int
) -> Iterator[torch.Tensor]:
    """Batches of the streams, one after another, until they hold ≥ `tokens` SAE positions."""
    remaining = tokens
    queue = iter(streams)
    stream = next(queue)
    while remaining > 0:
        try:
            batch = stream.next_batch(batch_size)
        except StopIteration:
            stream = next(queue, None)
            if stream is None:
                return
            continue
        per_context = sae_token_mask(batch, special).sum(1)
        needed = int((per_context.cumsum(0) < remaining).sum()) + 1
        batch = batch[:needed]
        remaining -= int(per_context[:needed].sum())
        yield batch
