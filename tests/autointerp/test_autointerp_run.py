"""run_autointerp end to end against the fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fake_llm import MALFORMED, MARK, FakeLLM
from synthetic_db import N_LATENTS

from saelab.analysis.database import FeatureDB
from saelab.autointerp.client import OpenAIBackend
from saelab.autointerp.run import AutointerpAborted, AutointerpConfig, run_autointerp

LIVE = list(range(N_LATENTS - 1))
CONFIG = AutointerpConfig(explain_top=3, explain_quantile=2)


def backend(url: str, **options: object) -> OpenAIBackend:
    return OpenAIBackend(url, "fake-model", backoff=0.01, **{"max_retries": 2, **options})


def autointerp_rows(path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM autointerp ORDER BY rowid").fetchall()


def latent_of(user: str) -> int:
    """Which synthetic latent a prompt is about (the explanation names its word w{i})."""
    return int(re.search(r'the token "w(\d+)"', user).group(1))


def fuzzing_reference(user: str, latent: int) -> float:
    """Balanced accuracy recomputed from the prompt: an excerpt is correctly marked when its
    mark is the latent's activating word (w or z), and the literal LLM picks marks equal to w."""
    marks = [
        MARK.findall(line)[0].strip() for line in user.splitlines() if re.match(r"\d+\. ", line)
    ]
    truth = np.array([m in (f"w{latent}", f"z{latent}") for m in marks])
    picked = np.array([m == f"w{latent}" for m in marks])
    tpr = (picked & truth).sum() / truth.sum()
    tnr = (~picked & ~truth).sum() / (~truth).sum()
    return (tpr + tnr) / 2


def test_explains_and_scores_every_latent(features_db: Path, fake_llm) -> None:
    server = fake_llm(delay=0.05)
    llm = backend(server.base_url, concurrency=3)
    summary = run_autointerp(
        features_db, list(range(N_LATENTS)), llm, CONFIG, workers=3, prices=(1.0, 2.0)
    )
    assert summary["done"] == len(LIVE) and summary["no_examples"] == 1
    assert summary["skipped"] == 1  # the dead latent needs no request
    with FeatureDB(features_db) as db:
        for i in LIVE:
            row = db.latent(i)
            assert row["explanation"] == f'the token "w{i}".'
            # held out: 3 top examples (w, detected) + 2 quantile (z, missed); 5 negatives (all
            # rejected): TPR 3/5, TNR 1 → 0.8 for every latent.
            assert row["score_detection"] == pytest.approx(0.8)
        assert db.latent(N_LATENTS - 1)["explanation"] is None
        assert db.search("w3") == [3]  # the FTS index sees the new explanations
    fuzz = server.replies("fuzzing")
    assert len(fuzz) == len(LIVE)
    with FeatureDB(features_db) as db:
        for entry in fuzz:
            i = latent_of(entry.user)
            assert db.latent(i)["score_fuzzing"] == pytest.approx(fuzzing_reference(entry.user, i))
    rows = autointerp_rows(features_db)
    assert len(rows) == 3 * len(LIVE) and all(r["parsed"] == 1 and r["error"] is None for r in rows)
    usage = summary["usage"]
    ok = [e for e in server.log if e.status == 200]
    assert usage["requests"] == len(ok) == 3 * len(LIVE)
    assert usage["prompt_tokens"] == sum(e.prompt_tokens for e in ok)
    assert usage["completion_tokens"] == sum(e.completion_tokens for e in ok)
    assert usage["cost"] == pytest.approx(
        (usage["prompt_tokens"] + 2 * usage["completion_tokens"]) / 1000
    )
    assert sum(r["prompt_tokens"] for r in rows) == usage["prompt_tokens"]
    assert summary["mean_detection"] == pytest.approx(0.8)
    assert 1 < server.max_in_flight <= 3


def test_detection_negatives_come_from_other_latents(features_db: Path, fake_llm) -> None:
    server = fake_llm()
    run_autointerp(features_db, [2], backend(server.base_url), CONFIG)
    user = server.replies("detection")[0].user
    excerpts = [line for line in user.splitlines() if re.match(r"\d+\. ", line)]
    own = [x for x in excerpts if re.search(r"\b[wz]2\b", x)]
    others = [x for x in excerpts if re.search(r"\b[wz][013-9]\b", x)]
    assert len(own) == 5 and len(others) == 5 and "<<" not in user.split("Excerpts:")[1]


def test_rerun_skips_answered_latents_unless_overwrite(features_db: Path, fake_llm) -> None:
    server = fake_llm()
    run_autointerp(features_db, LIVE[:3], backend(server.base_url), CONFIG)
    first = len(server.log)
    summary = run_autointerp(features_db, LIVE, backend(server.base_url), CONFIG)
    assert summary["skipped"] == 3 and summary["done"] == len(LIVE)
    assert len(server.log) - first == 3 * (len(LIVE) - 3)
    assert summary["results"][0]["detection"] == pytest.approx(0.8)  # reported from the table
    before = len(server.log)
    overwrite = AutointerpConfig(explain_top=3, explain_quantile=2, overwrite=True)
    summary = run_autointerp(features_db, [0], backend(server.base_url), overwrite)
    assert summary["skipped"] == 0 and len(server.log) - before == 3
    other = OpenAIBackend(server.base_url, "another-model", backoff=0.01)
    summary = run_autointerp(features_db, [0], other, CONFIG)
    assert summary["skipped"] == 0  # a different LLM explains again


def test_http_errors_are_retried_within_a_run(features_db: Path, fake_llm) -> None:
    server = fake_llm()
    server.fail(429, 2)
    server.fail(500, 1)
    summary = run_autointerp(features_db, [0, 1], backend(server.base_url, max_retries=3), CONFIG)
    assert summary["done"] == 2 and summary["usage"]["retries"] == 3
    assert [e.status for e in server.log[:3]] == [429, 429, 500]


def test_exhausted_retries_are_recorded_and_retried_next_run(features_db: Path, fake_llm) -> None:
    server = fake_llm()
    server.fail(500, 3)  # the first request (latent 0's explanation) fails 1 + 2 retries
    summary = run_autointerp(features_db, [0, 1], backend(server.base_url, concurrency=1), CONFIG)
    assert [r["status"] for r in summary["results"]] == ["error", "done"]
    assert "HTTP 500" in summary["results"][0]["errors"][0]
    errors = [r for r in autointerp_rows(features_db) if r["error"] is not None]
    assert len(errors) == 1 and errors[0]["latent"] == 0 and errors[0]["kind"] == "explanation"
    summary = run_autointerp(features_db, [0, 1], backend(server.base_url), CONFIG)
    assert [r["status"] for r in summary["results"]] == ["done", "done"]
    assert [r["skipped"] for r in summary["results"]] == [False, True]


def test_malformed_explanations_are_recorded_unparsed(features_db: Path, fake_llm) -> None:
    server = fake_llm(malformed={"explanation"})
    summary = run_autointerp(features_db, [0, 1], backend(server.base_url), CONFIG)
    assert summary["unparsed"] == 2 and summary["error"] == 0
    rows = autointerp_rows(features_db)
    assert [(r["kind"], r["parsed"]) for r in rows] == [("explanation", 0)] * 2
    assert rows[0]["raw"] == MALFORMED and rows[0]["result"] is None
    with FeatureDB(features_db) as db:
        assert db.latent(0)["explanation"] is None and db.latent(0)["score_detection"] is None
    assert not server.replies("detection")  # nothing to score without an explanation


def test_malformed_scores_are_recorded_unparsed(features_db: Path, fake_llm) -> None:
    server = fake_llm(malformed={"detection"})
    summary = run_autointerp(features_db, [4], backend(server.base_url), CONFIG)
    result = summary["results"][0]
    assert result["status"] == "unparsed" and result["detection"] is None
    assert result["fuzzing"] is not None
    with FeatureDB(features_db) as db:
        row = db.latent(4)
    assert row["explanation"] == 'the token "w4".' and row["score_detection"] is None
    parsed = {r["kind"]: r["parsed"] for r in autointerp_rows(features_db)}
    assert parsed == {"explanation": 1, "detection": 0, "fuzzing": 1}


def test_garbage_bodies_are_recorded_as_errors_not_crashes(features_db: Path, fake_llm) -> None:
    server = fake_llm(garbage_body=True)
    summary = run_autointerp(features_db, [0, 1], backend(server.base_url), CONFIG)
    assert summary["error"] == 2 and "not a chat completion" in summary["results"][0]["errors"][0]
    assert [r["error"] is not None for r in autointerp_rows(features_db)] == [True, True]


def test_server_down_keeps_finished_work_and_rerun_continues(
    features_db: Path, fake_llm, dead_url: str
) -> None:
    with pytest.raises(AutointerpAborted, match=r"cannot reach the server") as caught:
        run_autointerp(features_db, LIVE, backend(dead_url), CONFIG)
    assert "Rerun the same command" in str(caught.value) and dead_url in str(caught.value)
    assert caught.value.summary["finished"] == 0 and not autointerp_rows(features_db)

    server = fake_llm(shutdown_after=7)  # stops after latent 2's explanation
    with pytest.raises(AutointerpAborted) as caught:
        run_autointerp(features_db, LIVE, backend(server.base_url, concurrency=1), CONFIG)
    answered = [e for e in server.log if e.status == 200]
    assert len(answered) >= 7  # (uvicorn may serve one more before it notices should_exit)
    assert caught.value.summary["finished"] == len(answered) // 3 < len(LIVE)
    rows = autointerp_rows(features_db)
    assert [(r["kind"], r["raw"]) for r in rows] == [(e.kind, e.reply) for e in answered]
    with FeatureDB(features_db) as db:
        assert [db.latent(i)["explanation"] is not None for i in LIVE] == [True] * 3 + [False] * 3
        assert db.latent(1)["score_fuzzing"] is not None

    again = fake_llm()
    summary = run_autointerp(features_db, LIVE, backend(again.base_url), CONFIG)
    assert summary["done"] == len(LIVE) and summary["skipped"] == len(answered) // 3
    assert len(again.log) == 3 * len(LIVE) - len(answered)  # only missing answers were asked
    assert len(again.replies("explanation")) == len(LIVE) - 3


def test_fake_server_lifetime_is_bounded() -> None:
    server = FakeLLM(lifetime=0.5).start()
    server._thread.join(timeout=5)
    assert not server._thread.is_alive()
    server.stop()
