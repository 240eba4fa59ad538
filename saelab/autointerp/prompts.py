"""Chat prompts for the explainer and the two scorers, and parsers for the LLM's answers.

Activating tokens are marked <<like this>>. The explainer answers "Explanation: <sentence>"
(a reply of one line without the prefix is taken as the sentence); the scorers answer with a
JSON list of context numbers, e.g. [2, 5]. A reply that does not follow the format parses to
None (recorded as unparsed, never an exception).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

Messages = list[dict[str, str]]
MARK_OPEN, MARK_CLOSE = "<<", ">>"

EXPLAIN_SYSTEM = (
    "You are a meticulous interpretability researcher. You study one latent of a sparse "
    "autoencoder trained on a language model's activations. You are shown text excerpts where "
    "the latent fires; the tokens where it fires are marked <<like this>>, and each excerpt "
    "lists its strongest activating tokens. Work out what the latent responds to and give a "
    "one-sentence explanation. Reply with exactly one line of the form\n"
    "Explanation: <one sentence>"
)
DETECTION_SYSTEM = (
    "You are a meticulous interpretability researcher. You are given an explanation of a "
    "sparse autoencoder latent and numbered text excerpts. Some excerpts contain text the "
    "explanation describes (the latent fires there); the others do not. Decide which excerpts "
    "match the explanation. Reply with only a JSON list of the matching excerpt numbers, for "
    "example [1, 4], or [] if none match."
)
FUZZING_SYSTEM = (
    "You are a meticulous interpretability researcher. You are given an explanation of a "
    "sparse autoencoder latent and numbered text excerpts with some tokens marked <<like "
    "this>>. In some excerpts the marked tokens are the ones the explanation describes "
    "(correctly highlighted); in the others they were chosen at random. Decide which excerpts "
    "are correctly highlighted. Reply with only a JSON list of their numbers, for example "
    "[2, 3], or [] if none are."
)


def clean_token(token: str) -> str:
    """A token as display text: SentencePiece '▁' as a space, newlines escaped."""
    return token.replace("▁", " ").replace("\n", "\\n")


def render(tokens: Sequence[str], marked: Sequence[int] = ()) -> str:
    """The excerpt's text with the tokens at `marked` positions wrapped in << >>."""
    marks = set(marked)
    return "".join(
        f"{MARK_OPEN}{clean_token(t)}{MARK_CLOSE}" if i in marks else clean_token(t)
        for i, t in enumerate(tokens)
    )


def active_positions(activations: Sequence[float], limit: int | None = None) -> list[int]:
    """Positions with activation > 0, strongest first (at most `limit`), returned in text order."""
    ranked = sorted((i for i, a in enumerate(activations) if a > 0), key=lambda i: -activations[i])
    return sorted(ranked[:limit] if limit is not None else ranked)


def explanation_messages(examples: Sequence[dict], max_marks: int = 5) -> Messages:
    """Explainer prompt: each example with its activating tokens marked and listed with values."""
    lines = []
    for n, example in enumerate(examples, start=1):
        tokens, acts = example["tokens"], example["activations"]
        marked = active_positions(acts, max_marks)
        strongest = sorted(marked, key=lambda i: -acts[i])
        values = ", ".join(f'"{clean_token(tokens[i]).strip()}" ({acts[i]:.3g})' for i in strongest)
        lines.append(f"Excerpt {n}: {render(tokens, marked)}\nActivating tokens: {values}")
    user = "\n\n".join(lines) + "\n\nWhat does this latent respond to?"
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def detection_messages(explanation: str, contexts: Sequence[Sequence[str]]) -> Messages:
    """Detection prompt: the explanation and numbered, unmarked excerpts."""
    body = "\n".join(f"{n}. {render(tokens)}" for n, tokens in enumerate(contexts, start=1))
    user = f"Explanation: {explanation}\n\nExcerpts:\n{body}\n\nWhich excerpts match?"
    return [{"role": "system", "content": DETECTION_SYSTEM}, {"role": "user", "content": user}]


def fuzzing_messages(
    explanation: str, contexts: Sequence[tuple[Sequence[str], list[int]]]
) -> Messages:
    """Fuzzing prompt: the explanation and numbered excerpts with marked tokens."""
    body = "\n".join(
        f"{n}. {render(tokens, marked)}" for n, (tokens, marked) in enumerate(contexts, start=1)
    )
    user = (
        f"Explanation: {explanation}\n\nExcerpts:\n{body}\n\n"
        "Which excerpts are correctly highlighted?"
    )
    return [{"role": "system", "content": FUZZING_SYSTEM}, {"role": "user", "content": user}]


_EXPLANATION = re.compile(r"^[\s>*_#-]*explanation[*_]*\s*:[*_]*\s*(.*)$", re.I | re.M)
_LIST = re.compile(r"\[[\d\s,]*\]")
MAX_EXPLANATION_CHARS = 400


def _is_text(line: str) -> bool:
    """True unless the line holds control characters or U+FFFD (undecodable bytes): junk."""
    return "\ufffd" not in line and not any(unicodedata.category(c) == "Cc" for c in line)


def parse_explanation(reply: str) -> str | None:
    """The sentence after 'Explanation:', else the reply's only non-empty line if it is text
    (quotes and markdown stripped); None for several lines without the prefix, nothing, junk
    or too long."""
    match = _EXPLANATION.search(reply or "")
    lines = [line for line in (reply or "").splitlines() if line.strip()]
    if match is not None:
        text = match.group(1)
    elif len(lines) == 1 and _is_text(lines[0].strip()):
        text = lines[0]
    else:
        return None
    text = text.strip().strip("*_").strip()
    if len(text) >= 2 and (text[0], text[-1]) in (('"', '"'), ("'", "'"), ("“", "”")):
        text = text[1:-1].strip()
    if not text or len(text) > MAX_EXPLANATION_CHARS:
        return None
    return text


def parse_indices(reply: str, n: int) -> list[int] | None:
    """0-based indices from the last JSON list of numbers in `reply` (all within 1..n), else None."""
    found = _LIST.findall(reply or "")
    if not found:
        return None
    numbers = [int(k) for k in re.findall(r"\d+", found[-1])]
    if any(not 1 <= k <= n for k in numbers):
        return None
    return sorted({k - 1 for k in numbers})
