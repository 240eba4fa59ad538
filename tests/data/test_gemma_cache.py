"""Integration: a 1,000-token cache of gemma-3-270m blocks.6.hook_resid_post, written and read back."""

from __future__ import annotations

import pytest
import torch

from saelab.data import (
    ActivationCache,
    ActivationStore,
    ContextStream,
    load_corpus,
    sae_token_mask,
    special_token_ids,
    write_cache,
)

pytestmark = [pytest.mark.gemma, pytest.mark.slow]
HOOK = "blocks.6.hook_resid_post"


def test_gemma_cache_round_trip(gemma, tmp_path):
    lm = gemma["model"]
    corpus = load_corpus("python-stdlib")
    write_cache(
        lm, HOOK, corpus, tmp_path / "cache", 1000, context_size=128, batch_size=4, shard_tokens=512
    )
    cache = ActivationCache(tmp_path / "cache", model="gemma-3-270m", hooks=HOOK, d_in=640)
    cache.verify()
    assert [shard["tokens"] for shard in cache.shards] == [512, 488]
    stored = torch.cat([cache.read_shard(i, HOOK) for i in range(2)])
    batch = ContextStream(corpus, lm.tokenizer, 128).next_batch(4)
    expected = lm.activations(batch, HOOK)[HOOK][
        sae_token_mask(batch, special_token_ids(lm.tokenizer))
    ]
    torch.testing.assert_close(stored[: len(expected)], expected[:1000], rtol=0, atol=0)
    store = ActivationStore.from_cache(tmp_path / "cache", batch_size=256, epochs=1, device="cpu")
    assert sum(len(batch) for batch in store) == 1000
