"""Nearest latents by decoder cosine similarity (cos(d_i, d_j), self excluded), chunked."""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 2**24  # similarities per chunk (64 MiB in float32)


@torch.no_grad()
def decoder_neighbours(W_dec: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(cosines, indices), each (n, k): the k latents whose decoder rows are closest to d_i."""
    rows = W_dec.float()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = len(rows)
    k = min(k, n - 1)
    chunk = max(1, CHUNK_ELEMENTS // n)
    values, indices = [], []
    for start in range(0, n, chunk):
        sims = rows[start : start + chunk] @ rows.T
        own = torch.arange(start, start + len(sims), device=sims.device)
        sims[torch.arange(len(sims), device=sims.device), own] = -torch.inf
        best = sims.topk(k, dim=1)
        values.append(best.values)
        indices.append(best.indices)
    return torch.cat(values).cpu(), torch.cat(indices).cpu()
