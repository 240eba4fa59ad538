"""ActivationStore: shuffled batches of activation vectors (B, d_in) from an LM or a disk cache.

Each source chunk (hundreds of contexts, or a group of cache shards) is visited in the order of a
permutation seeded by (seed, chunk index); batches are gathered along it back to back (a batch
may straddle two chunks). The state is (chunk state, offset): load_state_dict
regenerates that one chunk and continues with exactly the batch that would have come next.
Memory: one chunk on the target device plus the batch being gathered (for a cache, up to
MIX_BYTES).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from saelab.data.cache_reader import ActivationCache
from saelab.data.corpora import Corpus, load_corpus
from saelab.data.seeding import derive_seed
from saelab.data.sources import ActivationSource, CacheSource, ModelSource, hook_list
from saelab.lm.dtypes import parse_dtype
from saelab.lm.loading import default_device, load_model
from saelab.lm.model import LanguageModel

# Shuffle window of a cache store: 2 GiB of float32 shuffles a 1M-token cache of a 640-wide
# residual stream in two groups of 500k tokens (docs/training.md, "Shuffling").
MIX_BYTES = 2 << 30


class ActivationStore:
    """An iterator of shuffled activation batches with exact save/restore of its position."""

    def __init__(
        self,
        source: ActivationSource,
        batch_size: int,
        *,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = parse_dtype(dtype)
        self.tokens_served = 0
        self._restart(None, 0)

    @classmethod
    def from_model(
        cls,
        model: LanguageModel | str,
        hook: str | list[str],
        corpus: Corpus | str = "python-stdlib",
        *,
        batch_size: int = 4096,
        context_size: int = 128,
        model_batch_size: int = 8,
        buffer_tokens: int = 1 << 16,
        seed: int = 0,
        split: str = "train",
        epochs: int | None = None,
        exclude_special_tokens: bool = True,
        max_tokens: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> ActivationStore:
        """Batches of `hook` activations computed on the fly (buffer_tokens ≈ tokens per shuffle chunk).

        max_tokens ends the store after about that many tokens (whole contexts); None: no limit.
        """
        lm = model if isinstance(model, LanguageModel) else load_model(model, device=device)
        corpus = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
        chunk_contexts = max(1, -(-buffer_tokens // context_size))
        source = ModelSource(
            lm, hook, corpus, context_size=context_size, model_batch_size=model_batch_size,
            chunk_contexts=chunk_contexts, seed=seed, split=split, epochs=epochs,
            exclude_special_tokens=exclude_special_tokens, max_tokens=max_tokens,
        )  # fmt: skip
        return cls(source, batch_size, seed=seed, device=device or lm.device, dtype=dtype)

    @classmethod
    def from_cache(
        cls,
        path: str | Path | ActivationCache,
        *,
        hook: str | list[str] | None = None,
        batch_size: int = 4096,
        seed: int = 0,
        epochs: int | None = None,
        model: str | None = None,
        d_in: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        mix_tokens: int | None = None,
    ) -> ActivationStore:
        """Batches read from a disk cache (checked against the expected model/hook/d_in if given).

        mix_tokens: rows shuffled together, whole shards at a time (None: as many as fit in
        MIX_BYTES of float32, the whole cache when it is small).
        """
        cache = (
            path
            if isinstance(path, ActivationCache)
            else ActivationCache(path, model=model, hooks=hook, d_in=d_in)
        )
        hook = hook or cache.default_hook()
        if mix_tokens is None:
            mix_tokens = max(1, MIX_BYTES // (4 * cache.d_in * len(hook_list(hook))))
        source = CacheSource(cache, hook, seed=seed, epochs=epochs, mix_tokens=mix_tokens)
        return cls(source, batch_size, seed=seed, device=device, dtype=dtype)

    @property
    def d_in(self) -> int:
        """Activation width."""
        return self.source.d_in

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        """The next (batch_size, d_in) batch (smaller only at the end of a finite source)."""
        parts, needed = [], self.batch_size
        while needed:
            if self._chunk is None or self._offset >= len(self._chunk):
                if not self._load_next_chunk():
                    break
                continue
            rows = self._permutation[self._offset : self._offset + needed]
            part = self._chunk.index_select(0, rows)
            parts.append(part)
            self._offset += len(part)
            needed -= len(part)
        if not parts:
            raise StopIteration
        batch = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.tokens_served += len(batch)
        return batch

    def next_batch(self) -> torch.Tensor:
        """Same as next(store)."""
        return next(self)

    def state_dict(self) -> dict:
        """JSON-serialisable position; load_state_dict(state) makes the next batch identical."""
        return {
            "source": self.source.describe(),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "chunk": self._chunk_state,
            "offset": self._offset,
            "tokens_served": self.tokens_served,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict() (same source and seed required)."""
        for key, value in (("source", self.source.describe()), ("seed", self.seed)):
            if state[key] != value:
                raise ValueError(
                    f"Activation store state does not match this store: {key} is {state[key]!r} "
                    f"in the state, {value!r} here."
                )
        self.batch_size = state["batch_size"]
        self.tokens_served = state["tokens_served"]
        self._restart(state["chunk"], state["offset"])

    def _restart(self, chunk_state: dict | None, offset: int) -> None:
        """Start the source at chunk_state (None: the beginning), `offset` tokens into it."""
        self._chunks = self.source.chunks(start=chunk_state)
        self._chunk: torch.Tensor | None = None
        self._permutation = torch.empty(0, dtype=torch.long)
        self._chunk_state = chunk_state
        self._offset = 0
        if chunk_state is not None and self._load_next_chunk():
            self._offset = offset

    def _load_next_chunk(self) -> bool:
        """Fetch and shuffle the next chunk; False when the source is exhausted."""
        try:
            state, activations = next(self._chunks)
        except StopIteration:
            return False
        generator = torch.Generator().manual_seed(derive_seed("store", self.seed, state["chunk"]))
        permutation = torch.randperm(len(activations), generator=generator)
        self._chunk = activations.to(device=self.device, dtype=self.dtype)
        self._permutation = permutation.to(self.device)
        self._chunk_state, self._offset = state, 0
        return True
