"""Activation sources: deterministic sequences of activation chunks that can restart at any chunk.

A source yields (chunk_state, activations) pairs; activations is a (tokens, d_in) tensor in
source order, and chunk_state is a small JSON-serialisable dict from which chunks(start=...)
regenerates exactly that chunk and everything after it. The ActivationStore shuffles within
chunks; a chunk mixes tokens from many sequences (hundreds of contexts, or a group of cache
shards).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Protocol

import torch

from saelab.data.cache_reader import ActivationCache
from saelab.data.corpora import Corpus
from saelab.data.packing import ContextStream, StreamPosition, sae_token_mask, special_token_ids
from saelab.data.seeding import derive_seed
from saelab.lm.hooks import resolve_hook
from saelab.lm.model import LanguageModel


class ActivationSource(Protocol):
    """What the ActivationStore needs from a source of activations."""

    d_in: int

    def describe(self) -> dict:
        """What the source reads (recorded in store states to catch mismatched restores)."""

    def chunks(self, start: dict | None = None) -> Iterator[tuple[dict, torch.Tensor]]:
        """(chunk_state, activations (tokens, d_in)) from chunk `start` on (None: the first)."""


def hook_list(hook: str | list[str]) -> list[str]:
    """One hook name or several; several are concatenated along the feature axis, in order."""
    return [hook] if isinstance(hook, str) else list(hook)


class ModelSource:
    """Activations of one hook (or several, side by side) computed by running an LM over a corpus."""

    def __init__(
        self,
        model: LanguageModel,
        hook: str | list[str],
        corpus: Corpus,
        *,
        context_size: int = 128,
        model_batch_size: int = 8,
        chunk_contexts: int = 512,
        seed: int = 0,
        split: str = "train",
        epochs: int | None = None,
        exclude_special_tokens: bool = True,
        max_tokens: int | None = None,
    ) -> None:
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be ≥ 1 (or None for no limit), got {max_tokens}")
        self.hooks = hook_list(hook)
        for name in self.hooks:
            resolve_hook(model.model, name)
        self.model, self.hook, self.corpus = model, hook, corpus
        self.context_size, self.model_batch_size = context_size, model_batch_size
        self.chunk_contexts, self.seed, self.split, self.epochs = (
            chunk_contexts,
            seed,
            split,
            epochs,
        )
        self.max_tokens = max_tokens
        self.excluded = special_token_ids(model.tokenizer) if exclude_special_tokens else []
        self.d_in = model.d_model * len(self.hooks)

    def describe(self) -> dict:
        """Model, hook, corpus and packing settings."""
        return {
            "kind": "model",
            "model": self.model.name,
            "hook": self.hook,
            "corpus": self.corpus.spec,
            "split": self.split,
            "seed": self.seed,
            "context_size": self.context_size,
            "chunk_contexts": self.chunk_contexts,
            "model_batch_size": self.model_batch_size,
            "excluded_token_ids": self.excluded,
            "max_tokens": self.max_tokens,
        }

    def chunks(self, start: dict | None = None) -> Iterator[tuple[dict, torch.Tensor]]:
        """Chunks of chunk_contexts contexts each, run through the LM in fixed batches.

        With max_tokens, the source ends once that many tokens were yielded, and the last chunk
        runs only about as many contexts as it still needs: no LM forwards nobody reads.
        """
        start = start or {"chunk": 0, "stream": StreamPosition().to_dict()}
        index, served = start["chunk"], start.get("tokens", 0)
        stream = ContextStream(
            self.corpus, self.model.tokenizer, self.context_size, seed=self.seed,
            split=self.split, epochs=self.epochs, start=StreamPosition.from_dict(start["stream"]),
        )  # fmt: skip
        while self.max_tokens is None or served < self.max_tokens:
            state = {"chunk": index, "stream": stream.position.to_dict(), "tokens": served}
            wanted = self.chunk_contexts
            if self.max_tokens is not None:
                wanted = min(wanted, -(-(self.max_tokens - served) // self.context_size))
            parts, contexts = [], 0
            while contexts < wanted:
                try:
                    batch = stream.next_batch(min(self.model_batch_size, wanted - contexts))
                except StopIteration:
                    break
                acts = self.model.activations(batch, self.hooks)
                mask = sae_token_mask(batch, self.excluded)
                parts.append(torch.cat([acts[h][mask.to(acts[h].device)] for h in self.hooks], -1))
                contexts += len(batch)
            if not parts:
                return
            chunk = torch.cat(parts)
            yield state, chunk
            served += len(chunk)
            index += 1


def shard_order(seed: int, epoch: int, n_shards: int) -> list[int]:
    """The seeded order in which an epoch visits the cache's shards."""
    order = list(range(n_shards))
    random.Random(derive_seed("shards", seed, epoch)).shuffle(order)
    return order


class CacheSource:
    """Activations of one hook (or several, side by side) read from a disk cache, a group of shards
    per chunk.

    A shard holds consecutive contexts of a few documents, so shuffling within one shard trains on
    blocks of related text: on gemma's stdlib cache that doubled the held-out FVU of a 300k-token
    run (docs/training.md, "Shuffling"). Each epoch visits the shards in a seeded order, split
    into as few equal groups as keep every group within `mix_tokens`; the store shuffles a whole
    group together.
    """

    def __init__(
        self,
        cache: ActivationCache,
        hook: str | list[str],
        *,
        seed: int = 0,
        epochs: int | None = None,
        mix_tokens: int = 1,
    ) -> None:
        if not cache.shards:
            raise ValueError(f"Cache {cache.path} has no shards.")
        if mix_tokens < 1:
            raise ValueError(f"mix_tokens must be ≥ 1, got {mix_tokens}")
        self.hooks = [cache.check_hook(h) for h in hook_list(hook)]
        self.cache, self.hook = cache, hook
        self.seed, self.epochs = seed, epochs
        self.d_in = cache.d_in * len(self.hooks)
        self.groups = min(len(cache.shards), max(1, -(-cache.tokens // mix_tokens)))

    def describe(self) -> dict:
        """Cache path, model, hook and shard groups per epoch."""
        return {
            "kind": "cache",
            "path": str(self.cache.path.resolve()),
            "model": self.cache.config["model"],
            "hook": self.hook,
            "seed": self.seed,
            "groups": self.groups,
        }

    def chunks(self, start: dict | None = None) -> Iterator[tuple[dict, torch.Tensor]]:
        """One chunk per shard group; chunk i is group i mod groups of epoch i // groups."""
        index = start["chunk"] if start else 0
        n_shards = len(self.cache.shards)
        while self.epochs is None or index < self.epochs * self.groups:
            epoch, position = divmod(index, self.groups)
            order = shard_order(self.seed, epoch, n_shards)
            group = order[
                position * n_shards // self.groups : (position + 1) * n_shards // self.groups
            ]
            yield {"chunk": index}, self._read_group(group)
            index += 1

    def _read_group(self, group: list[int]) -> torch.Tensor:
        """The shards of `group` stacked (hooks side by side), holding one shard at a time extra."""
        rows = sum(self.cache.shards[shard]["tokens"] for shard in group)
        out = torch.empty(rows, self.d_in, dtype=self.cache.dtype)
        start = 0
        for shard in group:
            acts = [self.cache.read_shard(shard, h) for h in self.hooks]
            end = start + len(acts[0])
            out[start:end] = acts[0] if len(acts) == 1 else torch.cat(acts, -1)
            start = end
        return out
