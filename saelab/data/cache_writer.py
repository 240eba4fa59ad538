"""Write an activation cache, resumably: each finished shard is committed with its resume point.

Resume exactness: a shard is cut after a fixed number of tokens, possibly in the middle of an
LM forward batch. The manifest then records the stream position at the start of that batch
plus how many of its tokens were already stored; a rerun restarts the stream there, recomputes
the same batch (same contexts, same batch composition, hence the same numbers) and skips the
stored tokens, so an interrupted-then-resumed cache is byte-identical to an uninterrupted one.
Memory: one preallocated shard buffer per hook plus one forward batch.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saelab.data.cache_format import (
    FORMAT,
    MANIFEST,
    TOKENS_FILE,
    VERSION,
    CacheError,
    check_config,
    read_manifest,
    storage_dtype,
    to_numpy,
    write_json_atomic,
    write_npy,
)
from saelab.data.cache_reader import ActivationCache
from saelab.data.corpora import Corpus, load_corpus
from saelab.data.packing import ContextStream, StreamPosition, sae_token_mask, special_token_ids
from saelab.data.split import check_split
from saelab.lm.dtypes import dtype_name
from saelab.lm.hooks import resolve_hook
from saelab.lm.model import LanguageModel

ProgressCallback = Callable[[int, int], None]


@dataclass
class _ShardBuffer:
    """Preallocated arrays for the shard being filled."""

    activations: dict[str, np.ndarray]
    tokens: np.ndarray
    fill: int = 0

    @property
    def capacity(self) -> int:
        return len(self.tokens)


def _shard_name(index: int) -> str:
    return f"shard_{index:05d}"


def _cache_config(
    model: LanguageModel,
    hooks: list[str],
    corpus: Corpus,
    tokens: int,
    *,
    context_size: int,
    batch_size: int,
    shard_tokens: int,
    dtype: str,
    seed: int,
    split: str,
    exclude_special_tokens: bool,
) -> dict:
    """Everything that determines the cache's bytes (a rerun must match it exactly)."""
    return {
        "model": model.name,
        "hooks": hooks,
        "d_in": model.d_model,
        "dtype": dtype,
        "model_dtype": dtype_name(model.dtype),
        "corpus": corpus.spec,
        "text_field": corpus.text_field,
        "dataset_split": corpus.dataset_split,
        "heldout_fraction": corpus.heldout_fraction,
        "split": split,
        "seed": seed,
        "context_size": context_size,
        "batch_size": batch_size,
        "shard_tokens": shard_tokens,
        "tokens": tokens,
        "excluded_token_ids": special_token_ids(model.tokenizer) if exclude_special_tokens else [],
    }


def _start_manifest(out: Path, config: dict) -> dict:
    """The existing manifest to resume (after checking it matches), or a fresh one.

    A manifest without shards and not complete is from a run that failed before its first
    shard (bad corpus, Ctrl-C, out of memory): it holds no data and is started afresh, with
    this run's config, so that a rerun (the same command or a corrected one) is never blocked.
    """
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        if manifest["shards"] or manifest["complete"]:
            check_config(out / MANIFEST, manifest["config"], config)
            ActivationCache(out, allow_incomplete=True).verify()
            return manifest
    elif out.exists() and any(out.iterdir()):
        raise CacheError(
            f"{out} exists and is not an activation cache (no {MANIFEST}); pick another --out."
        )
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "shards": [],
        "tokens_written": 0,
        "complete": False,
        "exhausted": False,
        "resume": {"stream": StreamPosition().to_dict(), "skip": 0},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _commit_shard(out: Path, manifest: dict, buffer: _ShardBuffer, resume: dict) -> None:
    """Write the filled shard (temp folder, fsync, rename), then the manifest that lists it."""
    name = _shard_name(len(manifest["shards"]))
    staging, final = out / f"{name}.partial", out / name
    for stale in (staging, final):
        if stale.exists():
            shutil.rmtree(stale)
    staging.mkdir()
    files = {}
    arrays = {TOKENS_FILE: buffer.tokens, **buffer.activations}
    for key, array in arrays.items():
        entry = write_npy(staging / f"{key}.npy", array[: buffer.fill])
        files[key] = {"path": f"{name}/{key}.npy", **entry}
    staging.rename(final)
    manifest["shards"].append({"name": name, "tokens": buffer.fill, "files": files})
    manifest["tokens_written"] += buffer.fill
    manifest["resume"] = resume
    write_json_atomic(out / MANIFEST, manifest)
    buffer.fill = 0


def check_cache_options(
    tokens: int, shard_tokens: int, batch_size: int, context_size: int, split: str, dtype: str
) -> None:
    """Raise ValueError naming the first invalid cache option (cheap; run before loading a model)."""
    sizes = {"tokens": tokens, "shard_tokens": shard_tokens, "batch_size": batch_size}
    for name, value in sizes.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}.")
    if context_size < 2:
        raise ValueError(f"context_size must be >= 2 (BOS + text), got {context_size}.")
    check_split(split)
    storage_dtype(dtype)


def write_cache(
    model: LanguageModel,
    hooks: str | Sequence[str],
    corpus: Corpus | str,
    out: str | Path,
    tokens: int,
    *,
    context_size: int = 128,
    batch_size: int = 8,
    shard_tokens: int = 1 << 16,
    dtype: str = "float32",
    seed: int = 0,
    split: str = "train",
    exclude_special_tokens: bool = True,
    on_progress: ProgressCallback | None = None,
) -> ActivationCache:
    """Cache `tokens` SAE-data positions of `hooks` on `corpus` into `out` (resumes a partial run)."""
    hooks = [hooks] if isinstance(hooks, str) else list(dict.fromkeys(hooks))
    for hook in hooks:
        resolve_hook(model.model, hook)
    check_cache_options(tokens, shard_tokens, batch_size, context_size, split, dtype)
    corpus = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    torch_dtype = storage_dtype(dtype)
    out = Path(out)
    config = _cache_config(
        model, hooks, corpus, tokens, context_size=context_size, batch_size=batch_size,
        shard_tokens=shard_tokens, dtype=dtype_name(torch_dtype), seed=seed, split=split,
        exclude_special_tokens=exclude_special_tokens,
    )  # fmt: skip
    manifest = _start_manifest(out, config)
    if not manifest["complete"]:
        _fill(model, hooks, corpus, out, manifest, torch_dtype, on_progress)
    return ActivationCache(out)


def _fill(
    model: LanguageModel,
    hooks: list[str],
    corpus: Corpus,
    out: Path,
    manifest: dict,
    dtype: torch.dtype,
    on_progress: ProgressCallback | None,
) -> None:
    """Run the LM over the stream from the manifest's resume point until the cache is full."""
    config = manifest["config"]
    total, excluded = config["tokens"], config["excluded_token_ids"]
    stream = ContextStream(
        corpus, model.tokenizer, config["context_size"], seed=config["seed"],
        split=config["split"], epochs=1,
        start=StreamPosition.from_dict(manifest["resume"]["stream"]),
    )  # fmt: skip
    skip = manifest["resume"]["skip"]
    capacity = min(config["shard_tokens"], total - manifest["tokens_written"])
    numpy_dtype = to_numpy(torch.zeros(0), dtype).dtype
    buffer = _ShardBuffer(
        {hook: np.empty((capacity, config["d_in"]), numpy_dtype) for hook in hooks},
        np.empty(capacity, np.int32),
    )
    if on_progress:
        on_progress(manifest["tokens_written"], total)
    while manifest["tokens_written"] < total:
        batch_start = stream.position
        try:
            batch = stream.next_batch(config["batch_size"])
        except StopIteration:
            manifest["exhausted"] = True
            break
        acts = model.activations(batch, hooks)
        mask = sae_token_mask(batch, excluded)
        token_ids = batch[mask].numpy().astype(np.int32)
        stored = {hook: to_numpy(acts[hook][mask.to(acts[hook].device)], dtype) for hook in hooks}
        consumed, skip = skip, 0
        while consumed < len(token_ids) and manifest["tokens_written"] < total:
            room = min(buffer.capacity, total - manifest["tokens_written"]) - buffer.fill
            take = min(len(token_ids) - consumed, room)
            window = slice(buffer.fill, buffer.fill + take)
            buffer.tokens[window] = token_ids[consumed : consumed + take]
            for hook in hooks:
                buffer.activations[hook][window] = stored[hook][consumed : consumed + take]
            buffer.fill += take
            consumed += take
            if take == room:
                resume = (
                    {"stream": batch_start.to_dict(), "skip": consumed}
                    if consumed < len(token_ids)
                    else {"stream": stream.position.to_dict(), "skip": 0}
                )
                _commit_shard(out, manifest, buffer, resume)
        if on_progress:
            on_progress(manifest["tokens_written"] + buffer.fill, total)
    if buffer.fill:
        _commit_shard(out, manifest, buffer, {"stream": stream.position.to_dict(), "skip": 0})
    manifest["complete"] = True
    write_json_atomic(out / MANIFEST, manifest)
