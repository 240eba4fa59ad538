"""Prompt analysis: top latents per token against a direct encode; explanations from sqlite."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from saelab.interventions import top_latents_per_token
from saelab.interventions.explanations import find_features_db, load_explanations
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
    import saelab

    quiet = saelab.create_sae("jumprelu", d_in=tiny_lm.d_model, d_sae=16, seed=0)
    with torch.no_grad():
        quiet.threshold.fill_(1e6)
        quiet.threshold[3] = 1e-6
        quiet.b_enc[3] = 1e3
    rows = top_latents_per_token(tiny_lm, quiet, HOOK, TEXT, k=5)
    assert all([i for i, _ in row.latents] == [3] for row in rows)


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
