"""Contrastive latents: which latents fire specifically on corpus A (positive) vs corpus B.

The unit of analysis is a document (e.g. one prompt) and its score for latent i is the maximum
activation of i over the document's tokens (BOS/EOS/pad excluded). Per latent:
- mean_pos / mean_neg: mean document score in each corpus; ratio = mean_pos / mean_neg;
- freq_pos / freq_neg: fraction of documents on which the latent fires at all (score > 0);
- auroc = U / (n_pos · n_neg), the Mann–Whitney probability that a random positive document
  scores higher than a random negative one (ties count ½); p_value: one-sided Mann–Whitney
  test (positive > negative), normal approximation with tie and continuity corrections;
  q_value: Benjamini–Hochberg over the latents that fire in either corpus and are not excluded.
Latents that fire on some positive document, less any excluded (dense, always-on latents:
saelab.analysis.dense), are ranked (descending) by one of RANK_BY:
"auroc" (then freq_diff, then mean_pos − mean_neg): separates the corpora best, including
latents that fire on both but more strongly on A; "freq_diff" (then auroc, mean difference):
fires on many A documents and few B documents; "ratio" (∞ when mean_neg = 0, then freq_pos).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

COLUMN_CHUNK = 2048  # latents ranked at a time in mann_whitney
RANK_BY = ("auroc", "freq_diff", "ratio")


@dataclass
class ContrastRow:
    """One latent's specificity for the positive corpus (module docstring)."""

    latent: int
    auroc: float
    p_value: float
    q_value: float
    mean_pos: float
    mean_neg: float
    ratio: float | None  # None when mean_neg = 0 (fires on no negative document)
    freq_pos: float
    freq_neg: float
    freq_diff: float
    explanation: str | None = None
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of each column of values (n, d), ties given their average rank."""
    columns = values.T.contiguous()
    ordered = columns.sort(dim=1).values
    left = torch.searchsorted(ordered, columns, side="left")
    right = torch.searchsorted(ordered, columns, side="right")
    return ((left + right + 1).double() / 2).T


def tie_sums(values: Tensor) -> Tensor:
    """Σ over tie groups of (t³ − t) per column of values (n, d) (= Σ over elements of t² − 1)."""
    columns = values.T.contiguous()
    ordered = columns.sort(dim=1).values
    sizes = (
        torch.searchsorted(ordered, columns, side="right")
        - torch.searchsorted(ordered, columns, side="left")
    ).double()
    return (sizes**2 - 1).sum(dim=1)


def mann_whitney(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """(U of the positive sample, one-sided p-value for pos > neg) per column of (n1, d), (n2, d).

    Normal approximation: z = (U − n1·n2/2 − ½) / σ with
    σ² = n1·n2/12 · ((N + 1) − Σ(t³ − t) / (N(N − 1))); p = 1 when σ = 0 (all values tied).
    """
    n1, n2 = pos.shape[0], neg.shape[0]
    if n1 == 0 or n2 == 0:
        raise ValueError(f"Both corpora need ≥ 1 document, got {n1} positive and {n2} negative.")
    if pos.shape[1] > COLUMN_CHUNK:  # bound the (d, N) int64 rank buffers
        parts = [
            mann_whitney(pos[:, s : s + COLUMN_CHUNK], neg[:, s : s + COLUMN_CHUNK])
            for s in range(0, pos.shape[1], COLUMN_CHUNK)
        ]
        return torch.cat([u for u, _ in parts]), torch.cat([p for _, p in parts])
    both = torch.cat([pos, neg]).double()
    n = n1 + n2
    u = average_ranks(both)[:n1].sum(dim=0) - n1 * (n1 + 1) / 2
    ties = tie_sums(both) / (n * (n - 1)) if n > 1 else torch.zeros(both.shape[1]).double()
    sigma = torch.sqrt(n1 * n2 / 12 * ((n + 1) - ties))
    z = (u - n1 * n2 / 2 - 0.5) / sigma
    p = torch.where(sigma > 0, 0.5 * torch.erfc(z / math.sqrt(2)), torch.ones_like(u))
    return u, p


def benjamini_hochberg(p: Tensor) -> Tensor:
    """Benjamini–Hochberg q-values of a 1-D tensor of p-values (same order)."""
    m = p.numel()
    if m == 0:
        return p.clone()
    order = p.argsort()
    scaled = p[order] * m / torch.arange(1, m + 1, dtype=p.dtype)
    monotone = scaled.flip(0).cummin(0).values.flip(0).clamp(max=1.0)
    q = torch.empty_like(p)
    q[order] = monotone
    return q


def _sort_key(row: ContrastRow, rank_by: str) -> tuple[float, float, float]:
    """Descending sort key of a row for one ranking criterion (ties broken by the others)."""
    mean_diff = row.mean_pos - row.mean_neg
    if rank_by == "freq_diff":
        return (row.freq_diff, row.auroc, mean_diff)
    if rank_by == "ratio":
        return (math.inf if row.ratio is None else row.ratio, row.freq_pos, row.auroc)
    return (row.auroc, row.freq_diff, mean_diff)


def rank_contrast(
    pos: Tensor,
    neg: Tensor,
    top: int = 20,
    rank_by: str = "auroc",
    exclude: Tensor | None = None,
) -> list[ContrastRow]:
    """The `top` latents most specific to the positive documents, from document scores
    pos (n_pos, d_sae) and neg (n_neg, d_sae) ≥ 0, ranked by `rank_by` (RANK_BY); latents set
    in the (d_sae,) bool mask exclude are neither ranked nor counted in the q-values."""
    if rank_by not in RANK_BY:
        raise ValueError(f"Unknown ranking {rank_by!r}; valid: {', '.join(RANK_BY)}.")
    if pos.shape[1:] != neg.shape[1:] or pos.dim() != 2:
        raise ValueError(
            f"Document scores must be (n, d_sae) with the same d_sae, got {tuple(pos.shape)} "
            f"and {tuple(neg.shape)}."
        )
    pos, neg = pos.double(), neg.double()
    u, p = mann_whitney(pos, neg)
    auroc = u / (pos.shape[0] * neg.shape[0])
    fired_pos, fired_neg = (pos > 0).double().mean(0), (neg > 0).double().mean(0)
    mean_pos, mean_neg = pos.mean(0), neg.mean(0)
    tested = (fired_pos > 0) | (fired_neg > 0)
    if exclude is not None:
        tested &= ~exclude.to(tested.device)
    q = torch.ones_like(p)
    q[tested] = benjamini_hochberg(p[tested])
    stats = [t.tolist() for t in (auroc, p, q, mean_pos, mean_neg, fired_pos, fired_neg)]
    rows = []
    for i in torch.nonzero(tested & (fired_pos > 0)).flatten().tolist():
        a, pv, qv, mp, mn, fp, fn = (s[i] for s in stats)
        rows.append(
            ContrastRow(
                latent=i,
                auroc=a,
                p_value=pv,
                q_value=qv,
                mean_pos=mp,
                mean_neg=mn,
                ratio=mp / mn if mn > 0 else None,
                freq_pos=fp,
                freq_neg=fn,
                freq_diff=fp - fn,
            )
        )
    rows.sort(key=lambda row: _sort_key(row, rank_by), reverse=True)
    return rows[:top]
