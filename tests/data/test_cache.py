"""Disk cache: round trip, manifest, resume exactness, corruption/mismatch detection, bounded memory."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from saelab.data import (
    ActivationCache,
    ActivationStore,
    CacheCorruptError,
    CacheIncompleteError,
    CacheMismatchError,
    ContextStream,
    load_corpus,
    sae_token_mask,
    special_token_ids,
    write_cache,
)
from saelab.data.cache_format import CacheError
from saelab.lm import load_model

HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]
OPTIONS = {"context_size": 32, "batch_size": 3, "shard_tokens": 300, "seed": 2}


@pytest.fixture
def cache_dir(tiny_lm, text_corpus_dir, tmp_path):
    write_cache(tiny_lm, HOOKS, load_corpus(text_corpus_dir), tmp_path / "cache", 1000, **OPTIONS)
    return tmp_path / "cache"


def test_round_trip_matches_the_model_in_context_order(tiny_lm, text_corpus_dir, cache_dir):
    cache = ActivationCache(cache_dir, model=tiny_lm.name, hooks=HOOKS, d_in=64)
    assert [shard["tokens"] for shard in cache.shards] == [300, 300, 300, 100]
    assert cache.tokens == 1000 and cache.hooks == HOOKS and cache.dtype == torch.float32
    stream = ContextStream(load_corpus(text_corpus_dir), tiny_lm.tokenizer, 32, seed=2)
    excluded = special_token_ids(tiny_lm.tokenizer)
    expected = {hook: [] for hook in HOOKS}
    tokens = []
    while sum(len(t) for t in tokens) < 1000:
        batch = stream.next_batch(3)
        mask = sae_token_mask(batch, excluded)
        acts = tiny_lm.activations(batch, HOOKS)
        tokens.append(batch[mask])
        for hook in HOOKS:
            expected[hook].append(acts[hook][mask])
    for hook in HOOKS:
        stored = torch.cat([cache.read_shard(i, hook) for i in range(4)])
        torch.testing.assert_close(stored, torch.cat(expected[hook])[:1000], rtol=0, atol=0)
        assert np.array_equal(cache.memmap(2, hook), cache.read_shard(2, hook).numpy())
    stored_tokens = np.concatenate([cache.read_tokens(i) for i in range(4)])
    assert stored_tokens.dtype == np.int32
    assert np.array_equal(stored_tokens, torch.cat(tokens)[:1000].numpy())
    assert not np.isin(stored_tokens, excluded).any()


def test_manifest_records_provenance_and_checksums(tiny_lm, cache_dir):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    config = manifest["config"]
    assert config["model"] == tiny_lm.name and config["hooks"] == HOOKS
    assert config["d_in"] == 64 and config["dtype"] == "float32" and config["tokens"] == 1000
    assert manifest["complete"] and manifest["tokens_written"] == 1000
    entry = manifest["shards"][0]["files"][HOOKS[0]]
    assert entry["path"] == f"shard_00000/{HOOKS[0]}.npy" and len(entry["sha256"]) == 64
    assert entry["bytes"] == (cache_dir / entry["path"]).stat().st_size
    ActivationCache(cache_dir).verify()


def test_store_reads_the_cache_and_resumes_exactly(cache_dir):
    store = ActivationStore.from_cache(
        cache_dir, hook=HOOKS[0], batch_size=128, seed=1, device="cpu"
    )
    epoch = torch.cat([next(store) for _ in range(8)])[:1000]
    direct = torch.cat([ActivationCache(cache_dir).read_shard(i, HOOKS[0]) for i in range(4)])
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, direct.tolist()))
    state = store.state_dict()
    expected = [next(store) for _ in range(5)]
    restored = ActivationStore.from_cache(
        cache_dir, hook=HOOKS[0], batch_size=128, seed=1, device="cpu"
    )
    restored.load_state_dict(state)
    assert all(torch.equal(a, next(restored)) for a in expected)


def test_store_shuffles_across_shards_in_groups_within_mix_tokens(cache_dir):
    cache = ActivationCache(cache_dir)
    shard_of = {
        tuple(row): shard
        for shard in range(4)
        for row in cache.read_shard(shard, HOOKS[0]).tolist()
    }

    def shards_per_batch(**options):
        store = ActivationStore.from_cache(
            cache, hook=HOOKS[0], batch_size=100, seed=1, epochs=1, device="cpu", **options
        )
        return [{shard_of[tuple(row)] for row in batch.tolist()} for batch in store]

    # Default window (MIX_BYTES): this small cache is one group, so every batch mixes all shards.
    assert all(len(shards) >= 3 for shards in shards_per_batch())
    # 500 tokens per group → 2 groups of 2 shards: the first batches hold exactly 2 shards.
    grouped = shards_per_batch(mix_tokens=500)
    assert len(grouped[0]) == 2 and grouped[0] == grouped[1]
    assert set().union(*grouped) == {0, 1, 2, 3}
    # mix_tokens=1: one shard at a time, as the cache was written (a batch straddles at most 2).
    single = [len(shards) for shards in shards_per_batch(mix_tokens=1)]
    assert max(single) == 2 and single.count(1) >= 5


def test_store_resumes_exactly_inside_a_shard_group(cache_dir):
    def make():
        return ActivationStore.from_cache(
            cache_dir, hook=HOOKS[0], batch_size=70, seed=4, device="cpu", mix_tokens=500
        )

    store = make()
    for _ in range(9):  # 630 rows: past the first group of 600, into an epoch's second group
        next(store)
    state = json.loads(json.dumps(store.state_dict()))
    expected = [next(store) for _ in range(20)]  # runs into the next epoch
    restored = make()
    restored.load_state_dict(state)
    assert all(torch.equal(a, next(restored)) for a in expected)
    with pytest.raises(ValueError, match="groups"):
        ActivationStore.from_cache(
            cache_dir, hook=HOOKS[0], batch_size=70, seed=4, device="cpu", mix_tokens=1
        ).load_state_dict(state)


def test_multi_hook_cache_needs_an_explicit_hook(cache_dir):
    with pytest.raises(CacheMismatchError, match="several hooks"):
        ActivationStore.from_cache(cache_dir, device="cpu")


def test_bfloat16_storage(tiny_lm, text_corpus_dir, tmp_path):
    cache = write_cache(
        tiny_lm,
        HOOKS[0],
        load_corpus(text_corpus_dir),
        tmp_path / "c",
        200,
        dtype="bfloat16",
        **OPTIONS,
    )
    shard = cache.read_shard(0, HOOKS[0])
    assert shard.dtype == torch.bfloat16 and shard.shape == (200, 64)
    assert shard.float().abs().sum() > 0


def test_corrupted_byte_is_detected_and_named(cache_dir):
    path = cache_dir / "shard_00001" / f"{HOOKS[0]}.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    cache = ActivationCache(cache_dir)  # sizes still match: detected on read
    cache.read_shard(0, HOOKS[0])
    with pytest.raises(CacheCorruptError, match="shard_00001"):
        cache.read_shard(1, HOOKS[0])
    with pytest.raises(CacheCorruptError, match="sha256"):
        cache.verify()
    store = ActivationStore.from_cache(
        cache_dir, hook=HOOKS[0], batch_size=1000, epochs=1, device="cpu"
    )
    with pytest.raises(CacheCorruptError):
        list(store)


def test_truncated_or_missing_shard_is_detected_on_open(cache_dir):
    path = cache_dir / "shard_00002" / "tokens.npy"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CacheCorruptError, match=r"shard_00002/tokens\.npy.*truncated"):
        ActivationCache(cache_dir)
    path.unlink()
    with pytest.raises(CacheCorruptError, match="missing"):
        ActivationCache(cache_dir)


@pytest.mark.parametrize(
    ("expected", "field"),
    [
        ({"model": "some/other-model"}, "model"),
        ({"hooks": "blocks.3.hook_resid_post"}, "blocks.3.hook_resid_post"),
        ({"d_in": 128}, "d_in"),
    ],
)
def test_manifest_mismatch_is_reported(cache_dir, expected, field):
    with pytest.raises(CacheMismatchError, match=field) as error:
        ActivationCache(cache_dir, **expected)
    assert "manifest.json" in str(error.value)


def test_rerun_with_a_different_config_is_refused(tiny_lm, text_corpus_dir, cache_dir):
    with pytest.raises(CacheMismatchError, match="hooks"):
        write_cache(tiny_lm, HOOKS[:1], load_corpus(text_corpus_dir), cache_dir, 1000, **OPTIONS)
    other = load_model(tiny_lm.name, device="cpu", dtype="bfloat16")
    with pytest.raises(CacheMismatchError, match="model_dtype"):
        write_cache(other, HOOKS, load_corpus(text_corpus_dir), cache_dir, 1000, **OPTIONS)


def test_unreadable_manifest_and_foreign_folders(tiny_lm, text_corpus_dir, tmp_path):
    with pytest.raises(CacheError, match="not a saelab activation cache"):
        ActivationCache(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CacheCorruptError, match=r"manifest\.json"):
        ActivationCache(tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not an activation cache"):
        write_cache(tiny_lm, HOOKS, load_corpus(text_corpus_dir), foreign, 10, **OPTIONS)


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_byte_identically(tiny_lm, text_corpus_dir, cache_dir, tmp_path):
    def stop_after_two_shards(done: int, _total: int) -> None:
        if done >= 650:
            raise _Interrupt

    partial = tmp_path / "partial"
    corpus = load_corpus(text_corpus_dir)
    with pytest.raises(_Interrupt):
        write_cache(
            tiny_lm, HOOKS, corpus, partial, 1000, on_progress=stop_after_two_shards, **OPTIONS
        )
    with pytest.raises(CacheIncompleteError, match="rerun"):
        ActivationCache(partial)
    assert len(ActivationCache(partial, allow_incomplete=True).shards) == 2
    write_cache(tiny_lm, HOOKS, corpus, partial, 1000, **OPTIONS)
    assert (partial / "manifest.json").read_bytes() == (cache_dir / "manifest.json").read_bytes()


def test_corpus_shorter_than_requested_stops_with_a_flag(tiny_lm, tmp_path):
    (tmp_path / "small.txt").write_text(
        "\n\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(30))
    )
    cache = write_cache(tiny_lm, HOOKS[0], load_corpus(tmp_path), tmp_path / "c", 10_000, **OPTIONS)
    assert cache.manifest["exhausted"] and 0 < cache.tokens < 10_000


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_memory_stays_bounded_by_one_shard(tiny_model, tmp_path):
    wide = load_model(tiny_model("llama", hidden_size=512, num_hidden_layers=1), device="cpu")
    shard_tokens, total = 8192, 160_000  # 16 MiB per shard, 312 MiB in all
    samples = []

    def sample(done: int, _total: int) -> None:
        if done > shard_tokens:
            samples.append(_rss_bytes())

    write_cache(
        wide, "blocks.0.hook_resid_pre", "python-stdlib", tmp_path / "c", total,
        context_size=128, batch_size=16, shard_tokens=shard_tokens, on_progress=sample,
    )  # fmt: skip
    growth = max(samples) - samples[0]
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB while caching"
