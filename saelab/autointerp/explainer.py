"""The explainer: show an LLM a latent's top and quantile examples, get a one-sentence explanation."""

from __future__ import annotations

from collections.abc import Sequence

from saelab.autointerp.client import ChatBackend
from saelab.autointerp.prompts import explanation_messages, parse_explanation
from saelab.autointerp.stage import StageResult, ask

EXPLAIN_MAX_TOKENS = 120


def split_examples(
    examples: Sequence[dict], n_top: int, n_quantile: int
) -> tuple[list[dict], list[dict]]:
    """(examples shown to the explainer, held-out examples for scoring).

    The explainer sees the `n_top` strongest top examples and every other quantile example
    (spread over the bands, at most `n_quantile`); scoring uses the rest so that it tests
    generalisation. With fewer than two held-out examples, scoring reuses all of them.
    """
    top = [e for e in examples if e["kind"] == "top"]
    quantile = [e for e in examples if e["kind"] == "quantile"]
    shown_quantile = quantile[::2][:n_quantile]
    shown = top[:n_top] + shown_quantile
    held_out = top[n_top:] + [e for e in quantile if not any(e is s for s in shown_quantile)]
    if len(held_out) < 2:
        held_out = list(examples)
    return shown, held_out


async def explain(
    backend: ChatBackend, examples: Sequence[dict], max_marks: int = 5
) -> StageResult:
    """Ask for a one-sentence explanation; StageResult.value is the sentence (None if unparsed)."""
    messages = explanation_messages(examples, max_marks=max_marks)
    result, text = await ask(
        backend, "explanation", messages, EXPLAIN_MAX_TOKENS, parse_explanation
    )
    result.value = text
    return result
