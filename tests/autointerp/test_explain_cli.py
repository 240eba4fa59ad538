"""`saelab explain`: JSON and table output, resume, clear errors, against the fake server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saelab.analysis.database import FeatureDB
from saelab.cli import app

FAST = ["--explain-top", "3", "--explain-quantile", "2", "--backoff", "0.01", "--max-retries", "1"]


def explain(run: Path, url: str, *extra: str, env: dict | None = None) -> object:
    args = ["explain", str(run), "--base-url", url, "--llm-model", "fake", *FAST, *extra]
    return CliRunner().invoke(app, args, env=env)


def test_json_summary_on_stdout_and_results_in_the_database(features_db: Path, fake_llm) -> None:
    server = fake_llm(api_key="sk-test")
    env = {"MY_KEY": "sk-test"}
    result = explain(
        features_db.parent, server.base_url, "--latents", "top:2", "--api-key-env", "MY_KEY",
        "--price-per-1k-prompt", "0.5", "--concurrency", "2", "--json", env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [r["latent"] for r in summary["results"]] == [4, 5]
    assert summary["done"] == 2 and summary["mean_detection"] == pytest.approx(0.8)
    usage = summary["usage"]
    assert usage["prompt_tokens"] == sum(e.prompt_tokens for e in server.log) > 0
    assert usage["cost"] == pytest.approx(usage["prompt_tokens"] * 0.5 / 1000)
    with FeatureDB(features_db) as db:
        assert db.latent(5)["explanation"] == 'the token "w5".'

    result = explain(features_db, server.base_url, "--latents", "4-5", env=env)
    assert result.exit_code == 0, result.output
    assert "2 already explained" in result.stdout and "\n0 requests" in result.stdout


def test_table_output_and_scorer_choice(features_db: Path, fake_llm) -> None:
    server = fake_llm()
    result = explain(features_db, server.base_url, "--latents", "1", "--scorers", "fuzzing")
    assert result.exit_code == 0, result.output
    assert 'the token "w1"' in result.stdout and "mean fuzzing" in result.stdout
    assert not server.replies("detection")


def test_server_down_exits_with_a_clear_error(features_db: Path, dead_url: str) -> None:
    result = explain(features_db, dead_url, "--latents", "0-2", "--json")
    assert result.exit_code == 1
    assert "cannot reach the server" in result.stderr and "Rerun the same command" in result.stderr
    assert json.loads(result.stdout)["finished"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--latents", "0-99"], "outside 0-6"),
        (["--latents", "0", "--scorers", "vibes"], "scorers"),
        (["--latents", "0", "--concurrency", "0"], "concurrency must be >= 1"),
        (["--latents", "0", "--backend", "claude"], "backend must be 'openai' or 'transformers'"),
    ],
)
def test_bad_input_is_reported(features_db: Path, args: list[str], message: str) -> None:
    result = explain(features_db, "http://127.0.0.1:9/v1", *args)
    assert result.exit_code == 1 and message in result.stderr


def test_missing_database_names_the_command_to_run(tmp_path: Path) -> None:
    result = explain(tmp_path, "http://127.0.0.1:9/v1", "--latents", "0")
    assert result.exit_code == 1 and "saelab analyze" in result.stderr
