"""Turn the `data` argument of `train` into exact-size batches of activations."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor


class BatchStream:
    """Exact `batch_size` batches from a tensor (shuffled each epoch) or an iterable of batches.

    An iterable is re-chunked to the batch size; a re-iterable one (a list, a store) is
    restarted when it runs out, a one-shot iterator raises a clear error instead.
    """

    def __init__(
        self,
        data: Tensor | Iterable[Tensor],
        batch_size: int,
        seed: int,
        device: str | torch.device,
    ) -> None:
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.tokens_read = 0
        self._peeked: list[Tensor] = []
        self._carry: Tensor | None = None
        if isinstance(data, Tensor):
            self._tensor = data.reshape(-1, data.shape[-1])
            if self._tensor.shape[0] == 0:
                raise ValueError("train(data=...): the activation tensor is empty")
            self._order = torch.empty(0, dtype=torch.long)
            self._pos = 0
        else:
            self._tensor = None
            self._source = data
            self._iter = iter(data)

    @property
    def d_in(self) -> int:
        return self.peek(1).shape[-1]

    def _next_raw(self) -> Tensor:
        """The next chunk from the source, before re-chunking."""
        if self._peeked:
            return self._peeked.pop(0)
        if self._tensor is not None:
            n = self._tensor.shape[0]
            if self._pos >= len(self._order):
                self._order = torch.randperm(n, generator=self.generator)
                self._pos = 0
            idx = self._order[self._pos : self._pos + self.batch_size]
            self._pos += len(idx)
            return self._tensor[idx]
        try:
            return self._next_from_iterable()
        except StopIteration:
            if self._iter is self._source:
                raise ValueError(
                    f"train(data=...): the activation iterator ran out after {self.tokens_read} "
                    "tokens; pass a re-iterable source, more data, or a smaller total_tokens"
                ) from None
            self._iter = iter(self._source)
            return self._next_from_iterable()

    def _next_from_iterable(self) -> Tensor:
        batch = next(self._iter)
        if not isinstance(batch, Tensor):
            raise TypeError(f"train(data=...): batches must be tensors, got {type(batch).__name__}")
        return batch.reshape(-1, batch.shape[-1])

    def peek(self, n_tokens: int) -> Tensor:
        """At least min(n_tokens, one epoch) rows from the start of the stream, not consumed."""
        if self._tensor is not None:
            n = min(n_tokens, self._tensor.shape[0])
            gen = torch.Generator().manual_seed(int(self.generator.initial_seed()) + 1)
            return self._tensor[torch.randperm(self._tensor.shape[0], generator=gen)[:n]].float()
        rows = sum(b.shape[0] for b in self._peeked)
        while rows < n_tokens:
            try:
                chunk = self._next_from_iterable()
            except StopIteration:
                break
            self._peeked.append(chunk)
            rows += chunk.shape[0]
        if not self._peeked:
            raise ValueError("train(data=...): the activation source yielded no batches")
        return torch.cat(self._peeked)[:n_tokens].float()

    def __iter__(self) -> Iterator[Tensor]:
        return self

    def __next__(self) -> Tensor:
        parts, rows = [], 0
        if self._carry is not None:
            parts, rows, self._carry = [self._carry], self._carry.shape[0], None
        while rows < self.batch_size:
            chunk = self._next_raw()
            parts.append(chunk)
            rows += chunk.shape[0]
        batch = torch.cat(parts) if len(parts) > 1 else parts[0]
        if batch.shape[0] > self.batch_size:
            self._carry = batch[self.batch_size :]
            batch = batch[: self.batch_size]
        self.tokens_read += batch.shape[0]
        return batch.to(self.device, torch.float32, non_blocking=True)
