"""`saelab steer / ablate / prompt / contrast` on a tiny model: JSON output, tables, errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

import saelab
from saelab.cli import app

HOOK = "blocks.1.hook_resid_post"
EXAMPLES = Path(__file__).parents[2] / "examples" / "contrast"
PROMPT = "def f(x):\n    return x"


def _invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def _steer(run, latents, strengths, *options):
    """`saelab steer RUN --latent … --strength … --prompt PROMPT OPTIONS`."""
    repeated = [a for v in latents for a in ("--latent", v)]
    repeated += [a for v in strengths for a in ("--strength", v)]
    return _invoke("steer", run, *repeated, "--prompt", PROMPT, *options)


def _contrast(run, *options):
    """`saelab contrast RUN` on the example harmful vs benign documents."""
    harmful, benign = EXAMPLES / "harmful.txt", EXAMPLES / "benign.txt"
    return _invoke("contrast", run, "--positive", harmful, "--negative", benign, *options)


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    """A run directory: sae/ (provenance: the tiny llama model) and a features.sqlite."""
    root = tmp_path_factory.mktemp("run")
    sae = saelab.create_sae(
        "jumprelu", d_in=64, d_sae=128, seed=0, model_name=str(tiny_model("llama")), hook_name=HOOK
    )
    sae.save(root / "sae")
    with sqlite3.connect(root / "features.sqlite") as db:
        db.execute("CREATE TABLE latents (latent INTEGER PRIMARY KEY, explanation TEXT)")
        db.executemany(
            "INSERT INTO latents VALUES (?, ?)", [(i, f"explained {i}") for i in range(128)]
        )
    db.close()
    return root


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_steer_json_and_zero_strength(run):
    base = _json(_steer(run, [3], [0], "--max-new-tokens", 6, "--json"))
    assert base["baseline"] == base["steered"] and base["mode"] == "add"
    assert base["latents"] == {"3": 0.0} and len(base["steered_tokens"]) == 6
    strong = _json(_steer(run, [3, 4], [80, -80], "--max-new-tokens", 6, "--json"))
    assert strong["baseline"] == base["baseline"] and strong["steered"] != base["baseline"]
    assert strong["latents"] == {"3": 80.0, "4": -80.0}


def test_steer_table_and_bad_options(run):
    result = _steer(run, [3], [5], "--max-new-tokens", 3, "--mode", "clamp")
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output and "clamp latent 3=5" in result.output
    bad = _steer(run, [3, 4], [1, 2, 3])
    assert bad.exit_code != 0 and "one per --latent (2), got 3" in bad.output
    bad = _steer(run, [500], [1])
    assert bad.exit_code == 1 and "Latent index 500 is out of range" in bad.output


def test_ablate_json(run):
    out = _json(
        _invoke(
            "ablate",
            run / "sae",
            "--latent",
            1,
            "--latent",
            2,
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            4,
            "--json",
        )
    )
    assert out["mode"] == "ablate" and out["latents"] == {"1": 0.0, "2": 0.0}


def test_missing_provenance_is_reported(tmp_path):
    saelab.create_sae("jumprelu", d_in=64, d_sae=8, seed=0).save(tmp_path / "bare")
    result = _invoke("ablate", tmp_path / "bare", "--latent", 1, "--prompt", "x")
    assert result.exit_code == 1
    assert "pass --model (the SAE config records no model_name) and --hook" in result.output


def test_prompt_json_with_explanations(run):
    out = _json(_invoke("prompt", run, "--prompt", PROMPT, "--k", 3, "--json"))
    assert out["hook"] == HOOK and out["features"] == str(run / "features.sqlite")
    assert "".join(t["token"] for t in out["tokens"]) == PROMPT
    for token in out["tokens"]:
        assert 0 < len(token["latents"]) <= 3
        activations = [a for _, a in token["latents"]]
        assert activations == sorted(activations, reverse=True)
        assert token["explanations"] == {str(i): f"explained {i}" for i, _ in token["latents"]}
    table = _invoke("prompt", run, "--prompt", PROMPT)
    assert table.exit_code == 0 and "explained" in table.output


def test_contrast_on_the_example_set(run):
    out = _json(_contrast(run, "--top", 5, "--examples", 2, "--json"))
    assert out["positive"]["documents"] == 30 and out["negative"]["documents"] == 30
    rows = out["latents"]
    assert len(rows) == 5
    assert [r["auroc"] for r in rows] == sorted((r["auroc"] for r in rows), reverse=True)
    for row in rows:
        assert 0 <= row["p_value"] <= row["q_value"] <= 1
        assert (
            len(row["examples"]["positive"]) == 2 and "«" in row["examples"]["positive"][0]["text"]
        )
        assert row["explanation"] == f"explained {row['latent']}"
    table = _contrast(run, "--top", 3)
    assert table.exit_code == 0 and "AUROC" in table.output
    by_freq = _json(_contrast(run, "--rank-by", "freq_diff", "--json"))
    diffs = [r["freq_diff"] for r in by_freq["latents"]]
    assert by_freq["rank_by"] == "freq_diff" and diffs == sorted(diffs, reverse=True)
    missing = _invoke("contrast", run, "--positive", "nope.txt", "--negative", "nope.txt")
    assert missing.exit_code == 1 and "no such file" in missing.output
