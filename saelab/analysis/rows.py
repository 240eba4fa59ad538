"""Turn a filled FeatureAccumulator (+ logit lens, neighbours) into features.sqlite rows."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from saelab.analysis.accumulator import MAGNITUDE_BINS, MAGNITUDE_RANGE, FeatureAccumulator
from saelab.analysis.buffers import PAD_TOKEN, ExampleBuffer

HEATMAP_LATENTS = 32
SEARCH_TOKENS = 5


class TokenText:
    """Display strings of token ids (decoded one at a time, cached)."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self._cache.get(token)
        if text is None:
            text = self.tokenizer.decode([token])
            self._cache[token] = text
        return text


def _round(values: np.ndarray) -> list[float]:
    """Floats rounded to 4 significant digits (compact JSON)."""
    return [float(f"{v:.4g}") for v in values.tolist()]


def _window_example(
    tokens: np.ndarray, acts: np.ndarray, window: int, text: TokenText
) -> tuple[list[str], list[float], int]:
    """(token strings, activations, index of the centre token) with out-of-context slots removed."""
    keep = tokens != PAD_TOKEN
    max_index = int(keep[:window].sum())
    return [text(int(t)) for t in tokens[keep]], _round(acts[keep]), max_index


def _chosen_slots(
    kind: str, slots: np.ndarray, values: np.ndarray, quantiles: int, per_quantile: int
) -> list[tuple[int, int | None, int]]:
    """(rank, quantile band, buffer slot) of the examples to store for one latent.

    "top": every filled slot in order (the buffer is sorted by activation). "quantile": the
    reservoir sorted by activation, split into `quantiles` equal bands (0 = lowest; with fewer
    samples than bands, the largest sample is still in the top band), and
    `per_quantile` evenly spaced examples from each band.
    """
    if kind == "top":
        return [(rank, None, int(slot)) for rank, slot in enumerate(slots)]
    ordered = slots[np.argsort(values[slots], kind="stable")]
    # Band of the r-th smallest of m samples: equal-size bands, the largest always in the top one.
    bands = ((np.arange(len(ordered)) + 1) * quantiles - 1) // max(len(ordered), 1)
    chosen = []
    for band in range(quantiles):
        group = ordered[bands == band]
        if len(group):
            picks = np.unique(np.linspace(0, len(group) - 1, per_quantile).round().astype(int))
            chosen += [(rank, band, int(group[p])) for rank, p in enumerate(picks)]
    return chosen


def _examples(
    buffer: ExampleBuffer, text: TokenText, quantiles: int, per_quantile: int, kind: str
) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """Per latent: its example rows of this kind, and its most frequent max-activating tokens."""
    buffer = buffer.sorted()
    filled = (buffer.priority > -torch.inf).cpu().numpy()
    values = buffer.value.cpu().numpy()
    tokens, acts = buffer.tokens.cpu().numpy(), buffer.acts.cpu().numpy()
    per_latent, top_tokens = [], []
    for latent in range(len(values)):
        slots = np.flatnonzero(filled[latent])
        rows, centre = [], Counter()
        for rank, band, slot in _chosen_slots(kind, slots, values[latent], quantiles, per_quantile):
            toks, activations, max_index = _window_example(
                tokens[latent, slot], acts[latent, slot], buffer.window, text
            )
            centre[toks[max_index].strip().lstrip("▁")] += 1
            rows.append({
                "latent": latent, "kind": kind, "rank": rank, "quantile": band,
                "max_activation": float(f"{values[latent, slot]:.6g}"), "tokens": toks,
                "activations": activations, "max_index": max_index,
            })  # fmt: skip
        per_latent.append(rows)
        top_tokens.append(" ".join(t for t, _ in centre.most_common(SEARCH_TOKENS) if t))
    return per_latent, top_tokens


def _histogram(acc: FeatureAccumulator, latent: int, counts: np.ndarray) -> dict[str, list]:
    """{"edges", "counts"} of one latent, trailing empty bins dropped."""
    nonzero = np.flatnonzero(counts)
    if len(nonzero) == 0:
        return {"edges": [], "counts": []}
    last = int(nonzero[-1]) + 1
    return {
        "edges": _round(np.array(acc.histograms.edges(latent)[: last + 1])),
        "counts": counts[:last].tolist(),
    }


def latent_rows(
    acc: FeatureAccumulator,
    text: TokenText,
    lens: tuple[torch.Tensor, ...],
    neighbours: tuple[torch.Tensor, torch.Tensor],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(latents rows, examples rows) for features.sqlite."""
    cfg = acc.config
    top, top_tokens = _examples(acc.top, text, cfg.quantiles, cfg.per_quantile, "top")
    quantile, _ = _examples(acc.reservoir, text, cfg.quantiles, cfg.per_quantile, "quantile")
    freq = acc.frequency().cpu().numpy()
    mean, peak = acc.mean_activation().cpu().numpy(), acc.max_act.cpu().numpy()
    fired, counts = acc.n_fired.cpu().numpy(), acc.histograms.counts.cpu().numpy()
    pos_v, pos_i, neg_v, neg_i = (t.numpy() for t in lens)
    cos, near = (t.numpy() for t in neighbours)
    rows, examples = [], []
    for i in range(acc.d_sae):
        rows.append({
            "latent": i, "frequency": float(freq[i]), "mean_activation": float(mean[i]),
            "max_activation": float(peak[i]), "n_fired": int(fired[i]),
            "histogram": _histogram(acc, i, counts[i]),
            "logit_pos": [[text(int(t)), float(f"{v:.4g}")] for t, v in zip(pos_i[i], pos_v[i], strict=True)],
            "logit_neg": [[text(int(t)), float(f"{v:.4g}")] for t, v in zip(neg_i[i], neg_v[i], strict=True)],
            "neighbours": [[int(j), float(f"{c:.4g}")] for j, c in zip(near[i], cos[i], strict=True)],
            "top_tokens": top_tokens[i], "explanation": None,
            "score_detection": None, "score_fuzzing": None,
        })  # fmt: skip
        examples += top[i] + quantile[i]
    return rows, examples


def overview(acc: FeatureAccumulator, text: TokenText) -> dict[str, Any]:
    """Data of the four-panel overview figure (stored in meta["overview"])."""
    l0 = acc.l0_counts.cpu().numpy()
    last = int(np.flatnonzero(l0)[-1]) + 1 if l0.any() else 1
    low, high = MAGNITUDE_RANGE
    frequent = acc.frequency().cpu().argsort(descending=True)[:HEATMAP_LATENTS].tolist()
    sample = acc.sample_acts[:, frequent].T.numpy()
    return {
        "l0_counts": l0[:last].tolist(),
        "magnitude_log10_edges": np.linspace(low, high, MAGNITUDE_BINS + 1).round(4).tolist(),
        "magnitude_counts": acc.magnitudes.cpu().tolist(),
        "sample_tokens": [text(t) for t in acc.sample_ids],
        "sample_latents": frequent,
        "sample_acts": [_round(row) for row in sample],
    }
