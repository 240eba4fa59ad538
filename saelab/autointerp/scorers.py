"""Scorers: how well an explanation predicts where a latent fires, as balanced accuracy.

Detection: a shuffled mix of activating contexts and contexts from other latents' examples;
the LLM picks those the explanation matches. Fuzzing: activating contexts, half with the truly
activating tokens marked and half with as many random non-activating tokens marked; the LLM
picks the correctly marked ones. Both: balanced accuracy = (TPR + TNR) / 2.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from saelab.autointerp.client import ChatBackend
from saelab.autointerp.prompts import (
    active_positions,
    detection_messages,
    fuzzing_messages,
    parse_indices,
)
from saelab.autointerp.stage import StageResult, ask

SCORE_MAX_TOKENS = 60
SCORERS = ("detection", "fuzzing")


def balanced_accuracy(truth: Sequence[bool], predicted: Sequence[bool]) -> float:
    """(TPR + TNR) / 2; when one class is absent, the rate of the class present."""
    if len(truth) != len(predicted) or not truth:
        raise ValueError(
            f"need equally long, non-empty lists (got {len(truth)} and {len(predicted)})."
        )
    rates = []
    for cls in (True, False):
        members = [p for t, p in zip(truth, predicted, strict=True) if t is cls]
        if members:
            rates.append(sum(p is cls for p in members) / len(members))
    return sum(rates) / len(rates)


def detection_items(
    positives: Sequence[Sequence[str]], negatives: Sequence[Sequence[str]], rng: random.Random
) -> tuple[list[Sequence[str]], list[bool]]:
    """Shuffled (contexts, is-activating flags)."""
    items = [(p, True) for p in positives] + [(n, False) for n in negatives]
    rng.shuffle(items)
    return [c for c, _ in items], [t for _, t in items]


def fuzzing_items(
    examples: Sequence[dict], rng: random.Random, max_marks: int = 5
) -> tuple[list[tuple[Sequence[str], list[int]]], list[bool]]:
    """Shuffled ((tokens, marked positions), correctly-marked flags): half of the examples keep
    their strongest activating tokens marked, the other half get as many random tokens marked
    from positions where the latent is 0 (or at least not among the true marks)."""
    order = list(examples)
    rng.shuffle(order)
    items = []
    for n, example in enumerate(order):
        tokens, acts = example["tokens"], example["activations"]
        correct = active_positions(acts, max_marks)
        if not correct:
            continue
        zero = [i for i, a in enumerate(acts) if a <= 0] or [
            i for i in range(len(tokens)) if i not in correct
        ]
        if n < len(order) // 2 and zero:
            items.append(((tokens, sorted(rng.sample(zero, min(len(correct), len(zero))))), False))
        else:
            items.append(((tokens, correct), True))
    rng.shuffle(items)
    return [c for c, _ in items], [t for _, t in items]


async def _score(backend: ChatBackend, kind: str, messages: list, truth: list[bool]) -> StageResult:
    """Ask which items are positive and score the answer (None when it does not parse)."""
    result, chosen = await ask(
        backend, kind, messages, SCORE_MAX_TOKENS, lambda text: parse_indices(text, len(truth))
    )
    if chosen is not None:
        picked = set(chosen)
        result.value = balanced_accuracy(truth, [i in picked for i in range(len(truth))])
    return result


async def score_detection(
    backend: ChatBackend,
    explanation: str,
    positives: Sequence[Sequence[str]],
    negatives: Sequence[Sequence[str]],
    rng: random.Random,
) -> StageResult:
    """Detection balanced accuracy of `explanation` (value None when the reply is unparsed)."""
    contexts, truth = detection_items(positives, negatives, rng)
    return await _score(backend, "detection", detection_messages(explanation, contexts), truth)


async def score_fuzzing(
    backend: ChatBackend,
    explanation: str,
    examples: Sequence[dict],
    rng: random.Random,
    max_marks: int = 5,
) -> StageResult:
    """Fuzzing balanced accuracy of `explanation` (value None when the reply is unparsed)."""
    contexts, truth = fuzzing_items(examples, rng, max_marks)
    if not contexts:
        return StageResult(kind="fuzzing", error="no activating tokens in the held-out examples")
    return await _score(backend, "fuzzing", fuzzing_messages(explanation, contexts), truth)
