"""`saelab steer / ablate / prompt / contrast` on a tiny model: JSON output, tables, errors,
dense (always-on) latents left out and listed apart."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
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


ALWAYS_ON = 9


@pytest.fixture(scope="module")
def dense_run(tiny_model, tmp_path_factory):
    """A run whose SAE has one latent (ALWAYS_ON) firing on every token, above all others;
    its features.sqlite has explanations but no frequency column."""
    root = tmp_path_factory.mktemp("dense-run")
    sae = saelab.create_sae(
        "jumprelu", d_in=64, d_sae=128, seed=0, model_name=str(tiny_model("llama")), hook_name=HOOK
    )
    with torch.no_grad():
        sae.b_enc[ALWAYS_ON] = 1e3
    sae.save(root / "sae")
    with sqlite3.connect(root / "features.sqlite") as db:
        db.execute("CREATE TABLE latents (latent INTEGER PRIMARY KEY, explanation TEXT)")
        db.executemany("INSERT INTO latents VALUES (?, ?)", [(i, f"e{i}") for i in range(128)])
    db.close()
    return root


def _frequencies(path: Path, dense: dict[int, float]) -> Path:
    """A features.sqlite with firing frequencies: 0.01 except the given latents."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE latents (latent INTEGER PRIMARY KEY, frequency REAL)")
        db.executemany(
            "INSERT INTO latents VALUES (?, ?)", [(i, dense.get(i, 0.01)) for i in range(128)]
        )
    db.close()
    return path


def test_prompt_leaves_dense_latents_out_and_lists_them(dense_run, tmp_path):
    unmeasured = _json(_invoke("prompt", dense_run, "--prompt", PROMPT, "--json"))
    assert unmeasured["dense"] == {
        "threshold": 0.5,
        "excluded": True,
        "source": None,
        "latents": [],
    }
    assert all(t["latents"][0][0] == ALWAYS_ON for t in unmeasured["tokens"])  # < 32 tokens
    db = _frequencies(tmp_path / "f.sqlite", {ALWAYS_ON: 1.0, 4: 0.5})
    out = _json(_invoke("prompt", dense_run, "--prompt", PROMPT, "--features", db, "--json"))
    assert out["dense"] == {
        "threshold": 0.5, "excluded": True, "source": str(db), "latents": [[ALWAYS_ON, 1.0]]
    }  # fmt: skip
    assert all(ALWAYS_ON not in [i for i, _ in t["latents"]] for t in out["tokens"])
    assert [t["latents"] for t in out["tokens"]] == [
        [[i, a] for i, a in t["latents"] if i != ALWAYS_ON][:5] for t in _json(
            _invoke("prompt", dense_run, "--prompt", PROMPT, "--include-dense", "--k", 6, "--json")
        )["tokens"]
    ]  # fmt: skip
    table = _invoke("prompt", dense_run, "--prompt", PROMPT, "--features", db)
    assert table.exit_code == 0
    assert f"Dense latents (> 50% of tokens, frequency from {db}) left out" in table.stdout
    assert f"{ALWAYS_ON} (100.0%)" in table.stdout
    kept = _json(
        _invoke("prompt", dense_run, "--prompt", PROMPT, "--features", db, "--include-dense",
                "--json")
    )  # fmt: skip
    assert kept["dense"]["excluded"] is False and kept["dense"]["latents"] == [[ALWAYS_ON, 1.0]]
    assert all(t["latents"][0][0] == ALWAYS_ON for t in kept["tokens"])
    lower = _json(
        _invoke("prompt", dense_run, "--prompt", PROMPT, "--features", db, "--dense-threshold",
                0.4, "--json")
    )  # fmt: skip
    assert lower["dense"]["latents"][0] == [ALWAYS_ON, 1.0]
    assert lower["dense"]["threshold"] == 0.4


def test_contrast_measures_dense_latents_on_both_corpora(dense_run):
    out = _json(_contrast(dense_run, "--top", 128, "--examples", 0, "--json"))
    source = out["dense"]["source"]
    assert source.startswith("the tokens of both corpora (") and out["dense"]["excluded"]
    assert out["dense"]["latents"][0] == [ALWAYS_ON, 1.0]
    assert ALWAYS_ON not in [r["latent"] for r in out["latents"]]
    listed = {i for i, _ in out["dense"]["latents"]}
    assert listed.isdisjoint(r["latent"] for r in out["latents"])
    assert all(f > 0.5 for _, f in out["dense"]["latents"])
    kept = _json(_contrast(dense_run, "--top", 128, "--examples", 0, "--include-dense", "--json"))
    assert ALWAYS_ON in [r["latent"] for r in kept["latents"]]
    assert (
        kept["dense"]["excluded"] is False and kept["dense"]["latents"] == out["dense"]["latents"]
    )
    assert len(kept["latents"]) == len(out["latents"]) + len(listed)
    table = _contrast(dense_run, "--top", 3, "--examples", 0)
    assert (
        table.exit_code == 0
        and "Dense latents (> 50% of tokens, frequency from the" in table.stdout
    )


@pytest.mark.parametrize("command", ["prompt", "contrast"])
def test_dense_options_are_documented_and_checked(dense_run, command):
    help_text = " ".join(_invoke(command, "--help").stdout.split())  # as one line, unwrapped
    for words in ("--exclude-dense", "--include-dense", "--dense-threshold", "more than half"):
        assert words in help_text, words
    if command == "prompt":
        bad = _invoke("prompt", dense_run, "--prompt", PROMPT, "--dense-threshold", 1.5)
    else:
        bad = _contrast(dense_run, "--dense-threshold", 0)
    value = "1.5" if command == "prompt" else "0"
    assert bad.exit_code == 1
    assert bad.stderr == (
        "Error: --dense-threshold must be a fraction of tokens in (0, 1] (0.5 = more than half), "
        f"got {value}.\n"
    )
