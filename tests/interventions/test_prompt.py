"""Prompt analysis: top latents per token against a direct encode; dense latents set apart;
explanations and firing frequencies from sqlite."""

from __future__ import annotations

import sqlite3

import pytest
import torch

import saelab
from saelab.analysis.dense import MIN_SAMPLE_TOKENS, DenseLatents, check_threshold
from saelab.interventions import top_latents_per_token
from saelab.interventions.explanations import (
    find_features_db,
    load_explanations,
    load_frequencies,
)
from saelab.interventions.prompt import analyze_prompt
from saelab.interventions.steering import encode_prompt

HOOK = "blocks.1.hook_resid_post"
TEXT = "for item in items:\n    print(item)"


def test_top_latents_match_a_direct_encode(tiny_lm, sae):
    rows = top_latents_per_token(tiny_lm, sae, HOOK, TEXT, k=4)
    ids = encode_prompt(tiny_lm, TEXT)[0]
    codes = sae.encode(tiny_lm.activations(ids[None], HOOK)[HOOK])[0].detach()
    assert [row.position for row in rows] == list(range(1, len(ids)))  # BOS skipped
    assert "".join(row.token for row in rows) == TEXT
    for row in rows:
        f = codes[row.position]
        expected = sorted(
            ((i, float(f[i])) for i in range(len(f)) if f[i] > 0), key=lambda t: -t[1]
        )
        assert [i for i, _ in row.latents] == [i for i, _ in expected[:4]]
        assert [a for _, a in row.latents] == pytest.approx([a for _, a in expected[:4]], rel=1e-5)


def test_only_firing_latents_are_listed(tiny_lm):
    quiet = saelab.create_sae("jumprelu", d_in=tiny_lm.d_model, d_sae=16, seed=0)
    with torch.no_grad():
        quiet.threshold.fill_(1e6)
        quiet.threshold[3] = 1e-6
        quiet.b_enc[3] = 1e3
    rows = top_latents_per_token(tiny_lm, quiet, HOOK, TEXT, k=5)
    assert all([i for i, _ in row.latents] == [3] for row in rows)


@pytest.fixture(scope="module")
def always_on(tiny_lm):
    """(SAE, latent): a random SAE whose latent 9 fires on every token, above all others."""
    sae = saelab.create_sae("jumprelu", d_in=tiny_lm.d_model, d_sae=32, seed=0).eval()
    with torch.no_grad():
        sae.b_enc[9] = 1e3
    return sae, 9


def test_excluded_latents_never_appear_and_the_rest_keep_their_order(tiny_lm, always_on):
    sae, latent = always_on
    full = top_latents_per_token(tiny_lm, sae, HOOK, TEXT, k=32)
    assert all(row.latents[0][0] == latent for row in full)
    exclude = torch.zeros(32, dtype=torch.bool)
    exclude[[latent, 3]] = True
    kept = top_latents_per_token(tiny_lm, sae, HOOK, TEXT, k=4, exclude=exclude)
    for with_all, without in zip(full, kept, strict=True):
        assert without.latents == [(i, a) for i, a in with_all.latents if i not in (latent, 3)][:4]


def test_dense_latents_from_frequencies_or_the_prompt_itself(tiny_lm, always_on):
    sae, latent = always_on
    frequency = [0.01] * 32
    frequency[latent], frequency[5] = 0.9, 0.5  # 0.5 is not above the threshold
    rows, dense = analyze_prompt(
        tiny_lm, sae, HOOK, TEXT, k=3, frequency=frequency, source="db.sqlite"
    )
    assert dense == DenseLatents(0.5, True, "db.sqlite", [[latent, 0.9]])
    assert all(latent not in [i for i, _ in row.latents] for row in rows)
    kept, same = analyze_prompt(
        tiny_lm, sae, HOOK, TEXT, k=3, frequency=frequency, source="db.sqlite", exclude_dense=False
    )
    assert all(row.latents[0][0] == latent for row in kept)
    assert same == DenseLatents(0.5, False, "db.sqlite", [[latent, 0.9]])
    short = len(encode_prompt(tiny_lm, TEXT)[0]) - 1
    assert short < MIN_SAMPLE_TOKENS  # too few tokens to measure: no filter
    rows, none = analyze_prompt(tiny_lm, sae, HOOK, TEXT, k=1)
    assert none == DenseLatents(0.5, True, None, []) and rows[0].latents[0][0] == latent
    assert "off: no firing frequencies" in none.line()
    long_text = "\n".join([TEXT] * 4)
    n = len(encode_prompt(tiny_lm, long_text)[0]) - 1
    assert n >= MIN_SAMPLE_TOKENS
    rows, measured = analyze_prompt(tiny_lm, sae, HOOK, long_text, k=2, threshold=0.99)
    assert measured.source == f"the prompt's {n} tokens" and measured.latents == [[latent, 1.0]]
    assert all(latent not in [i for i, _ in row.latents] for row in rows)
    with pytest.raises(ValueError, match=r"^db.sqlite: firing frequencies of 31 latents, but"):
        analyze_prompt(tiny_lm, sae, HOOK, TEXT, frequency=frequency[:31], source="db.sqlite")


def test_dense_listing_and_its_line():
    frequency = [0.2, 0.9, 0.51, 0.5, 1.0]
    dense = DenseLatents.among(frequency, [0, 1, 2, 3], threshold=0.5, excluded=True, source="f")
    assert dense.latents == [[1, 0.9], [2, 0.51]]  # 4 did not fire; 3 sits at the threshold
    assert dense.line() == (
        "Dense latents (> 50% of tokens, frequency from f) left out (--include-dense shows "
        "them): 1 (90.0%), 2 (51.0%)"
    )
    many = DenseLatents(0.25, False, "f", [[i, 1.0] for i in range(12)])
    assert many.line().startswith("Dense latents (> 25% of tokens, frequency from f) kept: 0 (")
    assert many.line().endswith(", 9 (100.0%), … 2 more (--json lists all)")


def test_dense_threshold_must_be_a_fraction():
    assert check_threshold(1.0) == 1.0
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError) as error:
            check_threshold(bad)
        assert str(error.value) == (
            f"--dense-threshold must be a fraction of tokens in (0, 1] (0.5 = more than half), "
            f"got {bad:g}."
        )


def _db(path, with_column: bool = True):
    with sqlite3.connect(path) as db:
        column = ", explanation TEXT" if with_column else ""
        db.execute(f"CREATE TABLE latents (latent INTEGER PRIMARY KEY, frequency REAL{column})")
        rows = [(1, 0.1, "loop keywords"), (2, 0.2, None), (3, 0.3, "")]
        if with_column:
            db.executemany("INSERT INTO latents VALUES (?, ?, ?)", rows)
        else:
            db.executemany("INSERT INTO latents VALUES (?, ?)", [r[:2] for r in rows])
    db.close()
    return path


def test_explanations_read_from_features_sqlite(tmp_path):
    run = tmp_path / "run"
    (run / "sae").mkdir(parents=True)
    db = _db(run / "features.sqlite")
    assert find_features_db(run) == db
    assert find_features_db(run / "sae") == db
    assert load_explanations(db, [1, 2, 3, 4]) == {1: "loop keywords"}
    assert load_explanations(tmp_path / "missing.sqlite", [1]) == {}
    assert load_explanations(None, [1]) == {}
    assert load_explanations(_db(tmp_path / "old.sqlite", with_column=False), [1]) == {}
    assert find_features_db(tmp_path) is None


def test_frequencies_read_from_features_sqlite(tmp_path):
    db = _db(tmp_path / "features.sqlite")
    assert load_frequencies(db) is None  # latents 1..3: not indexed from 0
    with sqlite3.connect(db) as connection:
        connection.execute("INSERT INTO latents VALUES (0, 0.75, NULL)")
    connection.close()
    assert load_frequencies(db) == [0.75, 0.1, 0.2, 0.3]
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE latents SET frequency = NULL WHERE latent = 2")
    connection.close()
    assert load_frequencies(db) is None
    with sqlite3.connect(tmp_path / "explained.sqlite") as connection:
        connection.execute("CREATE TABLE latents (latent INTEGER PRIMARY KEY, explanation TEXT)")
        connection.execute("INSERT INTO latents VALUES (0, 'no frequency column')")
    connection.close()
    assert load_frequencies(tmp_path / "explained.sqlite") is None
    assert load_frequencies(tmp_path / "missing.sqlite") is None and load_frequencies(None) is None
