"""Turn the `data` argument of `train` into exact-size batches, with a resumable position."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor


class BatchStream:
    """Exact `batch_size` batches from a tensor (shuffled each epoch) or an iterable of batches.

    An iterable is re-chunked to the batch size; a re-iterable one (a list, a store) is
    restarted when it runs out, a one-shot iterator raises a clear error instead. The first
    tokens can be peeked (for the normalisation constant) and are then trained on as usual.
    state_dict() captures the position exactly for tensors and for activation stores.
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
        self.tokens_read = 0
        self._peeked: list[Tensor] = []
        self._carry: Tensor | None = None
        self._tensor: Tensor | None = None
        if isinstance(data, Tensor):
            self._tensor = data.reshape(-1, data.shape[-1])
            if self._tensor.shape[0] == 0:
                raise ValueError("train(data=...): the activation tensor is empty")
            self.generator = torch.Generator().manual_seed(seed)
            self._order = torch.empty(0, dtype=torch.long)
            self._pos = 0
        else:
            self._source = data
            self._stateful = hasattr(data, "state_dict") and hasattr(data, "load_state_dict")
            self._start = data.state_dict() if self._stateful else None
            self._iter = iter(data)

    @property
    def d_in(self) -> int:
        return self.peek(1).shape[-1]

    def _next_raw(self) -> Tensor:
        """The next chunk from the source, before re-chunking."""
        if self._peeked:
            return self._peeked.pop(0)
        if self._tensor is not None:
            if self._pos >= len(self._order):
                self._order = torch.randperm(self._tensor.shape[0], generator=self.generator)
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
        # A carry restored from a checkpoint is on the CPU; chunks may be on the source's device.
        batch = torch.cat([p.to(parts[-1].device) for p in parts]) if len(parts) > 1 else parts[0]
        if batch.shape[0] > self.batch_size:
            self._carry = batch[self.batch_size :]
            batch = batch[: self.batch_size]
        self.tokens_read += batch.shape[0]
        return batch.to(self.device, torch.float32, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        """The exact position: the next batch after load_state_dict is the one that comes next."""
        state: dict[str, Any] = {"tokens_read": self.tokens_read, "carry": self._carry}
        if self._tensor is not None:
            return state | {
                "generator": self.generator.get_state(),
                "order": self._order,
                "pos": self._pos,
            }
        if not self._stateful:
            raise TypeError(
                "this activation source cannot save its position; use a tensor or an ActivationStore"
            )
        if self._peeked:
            # Still replaying peeked rows: restart from the beginning and skip what was used.
            return {"tokens_read": self.tokens_read, "start": self._start}
        return state | {"source": self._source.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens_read, self._peeked = state["tokens_read"], []
        if self._tensor is not None:
            self.generator.set_state(state["generator"])
            self._order, self._pos, self._carry = state["order"], state["pos"], state["carry"]
            return
        if "start" in state:
            self._source.load_state_dict(state["start"])
            self._iter, self._carry = iter(self._source), None
            skipped = 0
            while skipped < self.tokens_read:
                chunk = self._next_from_iterable()
                skipped += chunk.shape[0]
                if skipped > self.tokens_read:
                    self._carry = chunk[chunk.shape[0] - (skipped - self.tokens_read) :]
            return
        self._source.load_state_dict(state["source"])
        self._iter, self._carry = iter(self._source), state["carry"]


def rounding_message(total_tokens: int, batch_size: int, names: tuple[str, str]) -> str | None:
    """What is trained when the token budget is not a whole number of batches (else None)."""
    if total_tokens % batch_size == 0:
        return None
    steps = max(1, total_tokens // batch_size)
    return (
        f"{names[0]} {total_tokens:,} is not a multiple of {names[1]} {batch_size:,}; "
        f"training {steps * batch_size:,} tokens ({steps} step{'s' if steps > 1 else ''})"
    )


def cycling_message(source: str, available: int, trained: int) -> str | None:
    """How often a source smaller than the run is repeated (else None)."""
    if available >= trained:
        return None
    return (
        f"{source} holds {available:,} tokens but the run trains on {trained:,}; "
        f"the data will be cycled ({trained / available:.1f} epochs)"
    )
