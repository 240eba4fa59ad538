"""Prompts, parsers, balanced accuracy, example splits and latent specs, against references."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from saelab.analysis.database import FeatureDB
from saelab.autointerp.explainer import split_examples
from saelab.autointerp.prompts import (
    active_positions,
    explanation_messages,
    parse_explanation,
    parse_indices,
    render,
)
from saelab.autointerp.scorers import balanced_accuracy, fuzzing_items
from saelab.autointerp.selection import parse_latents


def test_render_marks_tokens_and_cleans_sentencepiece() -> None:
    assert render(["▁the", "▁cat", "\n", "sat"], [1, 3]) == " the<< cat>>\\n<<sat>>"


def test_active_positions_keep_strongest_in_text_order() -> None:
    assert active_positions([0, 3.0, 0, 5.0, 1.0, -2.0], limit=2) == [1, 3]
    assert active_positions([0, 3.0, 0, 5.0, 1.0], limit=None) == [1, 3, 4]


def test_explanation_prompt_marks_and_lists_activating_tokens() -> None:
    example = {"tokens": [" a", " cat", " sat"], "activations": [0.0, 2.5, 0.5]}
    user = explanation_messages([example], max_marks=1)[1]["content"]
    assert "Excerpt 1:  a<< cat>> sat" in user
    assert 'Activating tokens: "cat" (2.5)' in user


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Explanation: mentions of cats.", "mentions of cats."),
        ("Sure!\n**Explanation:** \"the word 'def'\"", "the word 'def'"),
        ("explanation:   Python keywords", "Python keywords"),
        ("Explanation:   ", None),
        ("Explanation:", None),
        ("Explanation:\nmentions of cats.", "mentions of cats."),
        ("", None),
        ("Explanation: " + "x" * 500, None),
        # one line without the prefix is the sentence itself
        ("It fires on cats.", "It fires on cats."),
        (
            "  \n  The word 'def' at the start of a line.  \n\n",
            "The word 'def' at the start of a line.",
        ),
        ('"Closing brackets in Python code."', "Closing brackets in Python code."),
        ("“Closing brackets.”\n", "Closing brackets."),
        ("'import statements'", "import statements"),
        ("**Numbers in arithmetic.**", "Numbers in arithmetic."),
        ('""', None),
        ("x" * 401, None),
        # several non-empty lines without the prefix stay unparsed
        ("It fires on cats.\nAlso on dogs.", None),
        ("Sure!\n\nIt fires on cats.", None),
        ("   \n\t\n", None),
        # a one-line reply that is not text (a broken model's bytes) stays unparsed
        ("co co\x1fplace co", None),
        ("er not ph\ufffdplace", None),
    ],
)
def test_parse_explanation(reply: str, expected: str | None) -> None:
    assert parse_explanation(reply) == expected


@pytest.mark.parametrize(
    ("reply", "n", "expected"),
    [
        ("[1, 3]", 4, [0, 2]),
        ("Answer: [4,2,2]", 4, [1, 3]),
        ("[]", 4, []),
        ("first [9] then [1, 2]", 4, [0, 1]),
        ("[0, 1]", 4, None),
        ("[5]", 4, None),
        ("excerpts 1 and 2", 4, None),
        ('["1"]', 4, None),
    ],
)
def test_parse_indices(reply: str, n: int, expected: list[int] | None) -> None:
    assert parse_indices(reply, n) == expected


def test_balanced_accuracy_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 30))
        truth = rng.random(n) < 0.5
        if truth.all() or not truth.any():
            continue
        predicted = rng.random(n) < 0.5
        tpr = (predicted & truth).sum() / truth.sum()
        tnr = (~predicted & ~truth).sum() / (~truth).sum()
        got = balanced_accuracy(truth.tolist(), predicted.tolist())
        assert got == pytest.approx((tpr + tnr) / 2)


def test_balanced_accuracy_edge_cases() -> None:
    assert balanced_accuracy([True, True, False, False], [True, False, False, False]) == 0.75
    assert balanced_accuracy([True, True, True], [True, False, False]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="equally long"):
        balanced_accuracy([True], [True, False])


def test_fuzzing_items_half_wrong_marks_only_on_zero_tokens() -> None:
    rng = random.Random(1)
    examples = []
    for k in range(9):
        acts = [0.0] * 12
        for position in rng.sample(range(12), 1 + k % 3):
            acts[position] = 1.0 + position
        examples.append({"tokens": [f" t{k}_{j}" for j in range(12)], "activations": acts})
    contexts, truth = fuzzing_items(examples, random.Random(2), max_marks=5)
    assert len(contexts) == 9 and sum(not t for t in truth) == 9 // 2
    by_tokens = {tuple(e["tokens"]): e["activations"] for e in examples}
    for (tokens, marked), correct in zip(contexts, truth, strict=True):
        acts = by_tokens[tuple(tokens)]
        active = [i for i, a in enumerate(acts) if a > 0]
        if correct:
            assert marked == active
        else:
            assert len(marked) == len(active) and all(acts[i] == 0 for i in marked)


def test_split_examples_holds_out_unshown_examples() -> None:
    examples = [{"kind": "top", "id": i} for i in range(6)]
    examples += [{"kind": "quantile", "id": 10 + i} for i in range(4)]
    shown, held = split_examples(examples, n_top=3, n_quantile=2)
    assert [e["id"] for e in shown] == [0, 1, 2, 10, 12]
    assert [e["id"] for e in held] == [3, 4, 5, 11, 13]
    shown, held = split_examples(examples[:3], n_top=3, n_quantile=2)
    assert held == examples[:3]  # too few to hold out: score on all


def test_parse_latents(features_db: Path) -> None:
    with FeatureDB(features_db) as db:
        assert parse_latents("0-2,5,1", db) == [0, 1, 2, 5]
        assert parse_latents("all", db) == list(range(7))
        assert parse_latents("top:3", db) == [5, 4, 3]  # most frequent first
        for bad, message in [
            ("0-7", "outside 0-6"),
            ("3-1", "reversed"),
            ("a-b", "cannot read 'a-b'"),
            ("top:x", "positive integer"),
            (",", "names no latents"),
        ]:
            with pytest.raises(ValueError, match=message):
                parse_latents(bad, db)
