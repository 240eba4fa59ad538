"""Sparse probing (SPEC §3): can k latents tell a token's kind as well as the raw activation?

Tasks come offline from Python source itself: each LM token is labelled with the kind of the
Python token (tokenize) its first visible character belongs to: comment, string, name, number,
operator or keyword. Each task is one kind against the others, balanced, split 80/20. The SAE's
probe uses the k latents with the largest |mean difference| between the classes on the training
split; the dense probe uses all of x. Both are L2-regularised logistic regressions (LBFGS).
"""

from __future__ import annotations

import io
import keyword
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("comment", "string", "name", "number", "operator", "keyword")
DEFAULT_KS = (1, 2, 5)
# Per-class cap of a balanced task, and the L2 weight of the probes (on standardised inputs).
MAX_PER_CLASS = 2000
L2 = 1e-3
TRAIN_FRACTION = 0.8
_STRING_TYPES = {tokenize.STRING} | {
    getattr(tokenize, name)
    for name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
    if hasattr(tokenize, name)
}


def _kind(token: tokenize.TokenInfo) -> str | None:
    if token.type == tokenize.COMMENT:
        return "comment"
    if token.type in _STRING_TYPES:
        return "string"
    if token.type == tokenize.NAME:
        return "keyword" if keyword.iskeyword(token.string) else "name"
    if token.type == tokenize.NUMBER:
        return "number"
    if token.type == tokenize.OP:
        return "operator"
    return None


def python_spans(text: str) -> list[tuple[int, int, int]]:
    """(start, end, kind index) character spans of the Python tokens of `text`, in order;
    tokenisation stops quietly at the first error (the spans before it are kept)."""
    line_starts = [0]
    for line in io.StringIO(text):
        line_starts.append(line_starts[-1] + len(line))
    spans = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            kind = _kind(token)
            if kind is not None:
                start = line_starts[token.start[0] - 1] + token.start[1]
                end = line_starts[token.end[0] - 1] + token.end[1]
                spans.append((start, end, KINDS.index(kind)))
    except (tokenize.TokenError, SyntaxError):
        pass
    return spans


def label_tokens(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """Per LM token (character offsets into text): the kind index of the Python token holding
    its first non-space character, −1 when none does."""
    spans = python_spans(text)
    labels, i = [], 0
    for start, end in offsets:
        first = start + len(text[start:end]) - len(text[start:end].lstrip())
        while i < len(spans) and spans[i][1] <= first:
            i += 1
        inside = i < len(spans) and spans[i][0] <= first < spans[i][1] and first < end
        labels.append(spans[i][2] if inside else -1)
    return labels


@dataclass
class ProbingSet:
    """Activations at a hook (N, d) and their kind labels (N,), from held-out Python source."""

    activations: Tensor
    labels: Tensor


def labelled_contexts(
    documents: Iterator[str], tokenizer, context_size: int
) -> Iterator[tuple[list[int], list[int]]]:
    """(token ids, labels) of consecutive contexts of each document, BOS first (label −1)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    step = context_size - len(bos)
    for text in documents:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        labels = label_tokens(text, enc["offset_mapping"])
        for i in range(0, len(enc["input_ids"]), step):
            yield bos + enc["input_ids"][i : i + step], [-1] * len(bos) + labels[i : i + step]


@torch.no_grad()
def build_probing_set(
    lm,
    hook: str,
    documents: Iterator[str],
    tokens: int,
    context_size: int = 128,
    on_progress: Callable[[int], None] | None = None,
) -> ProbingSet:
    """Labelled activations at `hook` for `tokens` labelled tokens (fewer when the documents
    run out), one context per LM pass; on_progress gets the count so far."""
    rows, labels, count = [], [], 0
    for ids, kinds in labelled_contexts(documents, lm.tokenizer, context_size):
        kinds_t = torch.tensor(kinds)
        keep = kinds_t >= 0
        if not keep.any():
            continue
        acts = lm.activations(torch.tensor([ids]), hook)[hook][0].float().cpu()
        rows.append(acts[keep])
        labels.append(kinds_t[keep])
        count += int(keep.sum())
        if on_progress is not None:
            on_progress(min(count, tokens))
        if count >= tokens:
            break
    if not rows:
        raise ValueError("no labelled tokens: sparse probing needs Python source (python-stdlib)")
    return ProbingSet(torch.cat(rows)[:tokens], torch.cat(labels)[:tokens])


def fit_logistic(
    x: Tensor, y: Tensor, l2: float = L2, balanced: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(w, b, mean, std): minimises mean log-loss + (l2/2)‖w‖² on standardised x (float64).

    balanced: each class weighs half of the log-loss (a sample of class c weighs N/(2·N_c)),
    for tasks where one class is rare (a letter against the other 25)."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    z, t = (x - mean) / std, y.double()
    weight = None
    if balanced:
        positives = t.sum().clamp_min(1)
        negatives = (len(t) - t.sum()).clamp_min(1)
        weight = len(t) / 2 * (t / positives + (1 - t) / negatives)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def objective() -> Tensor:
        opt.zero_grad()
        logits = z @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, weight)
        loss = loss + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(objective)
    return w.detach(), b.detach(), mean, std


def accuracy(x: Tensor, y: Tensor, fit: tuple[Tensor, Tensor, Tensor, Tensor]) -> float:
    """Fraction of x classified as y by a fitted probe."""
    w, b, mean, std = fit
    predicted = ((x.double() - mean) / std) @ w + b > 0
    return float((predicted == y.bool()).double().mean())


def top_latents(f: Tensor, y: Tensor, k: int) -> Tensor:
    """The k latents with the largest |mean(f | y=1) − mean(f | y=0)| (ties: lower index)."""
    diff = (f[y.bool()].double().mean(0) - f[~y.bool()].double().mean(0)).abs()
    return torch.sort(-diff, stable=True).indices[:k]


def balanced_split(labels: Tensor, kind: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train rows, train y, test rows, test y): kind vs the rest, equal class sizes."""
    g = torch.Generator().manual_seed(seed)
    pos = (labels == kind).nonzero().squeeze(1)
    neg = (labels != kind).nonzero().squeeze(1)
    n = min(len(pos), len(neg), MAX_PER_CLASS)
    pos = pos[torch.randperm(len(pos), generator=g)[:n]]
    neg = neg[torch.randperm(len(neg), generator=g)[:n]]
    rows = torch.cat([pos, neg])
    y = torch.cat([torch.ones(n), torch.zeros(n)])
    order = torch.randperm(2 * n, generator=g)
    rows, y = rows[order], y[order]
    cut = int(TRAIN_FRACTION * 2 * n)
    return rows[:cut], y[:cut], rows[cut:], y[cut:]


def sparse_probing(
    encode: Callable[[Tensor], Tensor],
    data: ProbingSet,
    ks: tuple[int, ...] = DEFAULT_KS,
    seed: int = 0,
    min_per_class: int = 20,
) -> dict[str, dict[str, float]]:
    """Per kind with ≥ min_per_class tokens in each class: dense and k-latent test accuracies,
    plus "mean" over those tasks. encode maps activations (N, d) to latents (N, n)."""
    f = encode(data.activations)
    results: dict[str, dict[str, float]] = {}
    for kind, name in enumerate(KINDS):
        train, y_train, test, y_test = balanced_split(data.labels, kind, seed)
        if len(test) < 2 or min(int(y_train.sum()), int((1 - y_train).sum())) < min_per_class:
            continue
        x = data.activations
        row = {"dense": accuracy(x[test], y_test, fit_logistic(x[train], y_train))}
        for k in ks:
            latents = top_latents(f[train], y_train, k)
            fit = fit_logistic(f[train][:, latents], y_train)
            row[f"k{k}"] = accuracy(f[test][:, latents], y_test, fit)
        results[name] = row | {"train": len(train), "test": len(test)}
    if results:
        keys = ["dense", *(f"k{k}" for k in ks)]
        results["mean"] = {
            key: sum(r[key] for r in results.values()) / len(results) for key in keys
        }
    return results
