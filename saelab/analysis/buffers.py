"""Bounded per-latent buffers for one streaming pass: top-k examples and reservoir samples.

Both keep, for every latent, the `size` events (token positions where the latent fired) with
the largest priority seen so far, plus a window of context around each. The top-k buffer uses
the activation as priority; the reservoir uses an i.i.d. uniform random key, which makes it a
uniform sample without replacement of all firing events (bottom-k sampling). Each batch is
merged with one torch.topk over its tokens and one over (buffer ∪ batch), never per-token loops,
so memory is O(d_sae · size · window) whatever the number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

PAD_TOKEN = -1  # token id marking window positions outside the context


@dataclass
class ExampleBuffer:
    """For each latent: the `size` best events so far, with their context windows.

    priority (n, size): the ranking key (-inf where empty); value (n, size): the activation;
    tokens (n, size, 2w+1) int32 token ids (PAD_TOKEN outside the context); acts (n, size, 2w+1)
    the latent's activation on each window token; where (n, size, 2): (context, position).
    """

    priority: Tensor
    value: Tensor
    tokens: Tensor
    acts: Tensor
    where: Tensor

    @classmethod
    def empty(cls, d_sae: int, size: int, window: int, device: torch.device) -> ExampleBuffer:
        """A buffer with no events yet."""
        width = 2 * window + 1
        return cls(
            priority=torch.full((d_sae, size), -torch.inf, device=device),
            value=torch.zeros(d_sae, size, device=device),
            tokens=torch.full((d_sae, size, width), PAD_TOKEN, dtype=torch.int32, device=device),
            acts=torch.zeros(d_sae, size, width, device=device),
            where=torch.full((d_sae, size, 2), -1, dtype=torch.int64, device=device),
        )

    @property
    def size(self) -> int:
        return self.priority.shape[1]

    @property
    def window(self) -> int:
        return (self.tokens.shape[2] - 1) // 2

    def nbytes(self) -> int:
        """Memory held by the buffer (independent of how many tokens were streamed)."""
        return sum(t.numel() * t.element_size() for t in vars(self).values())

    def merge(
        self,
        latent: Tensor,
        token: Tensor,
        priority: Tensor,
        f: Tensor,
        input_ids: Tensor,
        mask: Tensor,
        context_offset: int,
    ) -> None:
        """Merge one batch's firing events: latent, token (flat index into the batch's
        positions) and priority, 1-D tensors; f (batch, seq, n), input_ids and mask (batch, seq)
        give the windows (activations outside the mask of SAE positions shown as 0); context_offset numbers the batch's contexts within the whole stream.

        Slots are unordered (see sorted()): entering events overwrite the slots of evicted
        entries, so only entering events are gathered and written.
        """
        _, seq, n = f.shape
        candidates = _best_per_latent(latent, priority, n, self.size)
        cand_priority = torch.full((n, self.size), -torch.inf, device=f.device)
        cand_token = torch.zeros((n, self.size), dtype=torch.int64, device=f.device)
        cand_priority[latent[candidates.event], candidates.rank] = priority[candidates.event]
        cand_token[latent[candidates.event], candidates.rank] = token[candidates.event]
        best_priority, best = torch.cat((self.priority, cand_priority), 1).topk(self.size, dim=1)
        entering = (best >= self.size) & (best_priority > -torch.inf)
        if not entering.any():
            return
        kept = torch.zeros_like(self.priority, dtype=torch.int32)
        kept = kept.scatter_add_(1, best.clamp(max=self.size - 1), (best < self.size).int()) > 0
        self.priority.masked_fill_(~kept, -torch.inf)  # evicted entries
        # Pair each row's entering candidates with its first evicted slots (row-major order).
        rank = (~kept).cumsum(1) - 1
        targets = ~kept & (rank < entering.sum(1, keepdim=True))
        row, slot = targets.nonzero(as_tuple=True)
        lat, position = entering.nonzero(as_tuple=True)
        chosen = best[lat, position] - self.size
        index = cand_token[lat, chosen]  # token index within the batch
        flat_f, flat_ids = f.reshape(-1), input_ids.reshape(-1)
        context, col = index // seq, index % seq
        pos = col[:, None] + torch.arange(-self.window, self.window + 1, device=f.device)
        inside = (pos >= 0) & (pos < seq)
        window = context[:, None] * seq + pos.clamp(0, seq - 1)  # (events, width)
        self.priority[row, slot] = cand_priority[lat, chosen]
        self.value[row, slot] = flat_f.take(index * n + lat).float()
        self.tokens[row, slot] = torch.where(inside, flat_ids.take(window).int(), PAD_TOKEN)
        inside_sae = inside & mask.reshape(-1).take(window)
        acts = torch.where(inside_sae, flat_f.take(window * n + lat[:, None]).float(), 0.0)
        self.acts[row, slot] = acts
        self.where[row, slot] = torch.stack((context + context_offset, col), dim=-1)

    def sorted(self) -> ExampleBuffer:
        """A copy with each latent's slots ordered by priority, highest first (empty last)."""
        order = self.priority.argsort(dim=1, descending=True, stable=True)
        return ExampleBuffer(*(_pick(t, order) for t in vars(self).values()))


class _Candidates(NamedTuple):
    event: Tensor  # indices of the kept events
    rank: Tensor  # their rank within their latent (0 = highest priority)


def _best_per_latent(latent: Tensor, priority: Tensor, n: int, k: int) -> _Candidates:
    """The (at most) k highest-priority events of each latent, by two stable sorts."""
    order = priority.argsort(descending=True, stable=True)
    order = order[latent[order].argsort(stable=True)]  # grouped by latent, priority descending
    counts = torch.bincount(latent, minlength=n)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(len(order), device=latent.device) - starts[latent[order]]
    keep = rank < k
    return _Candidates(order[keep], rank[keep])


def _pick(values: Tensor, index: Tensor) -> Tensor:
    """values[i, index[i, j], ...] for every latent i (gather along dim 1, any trailing dims)."""
    expanded = index.reshape(*index.shape, *([1] * (values.dim() - 2)))
    return values.gather(1, expanded.expand(*index.shape, *values.shape[2:]))
