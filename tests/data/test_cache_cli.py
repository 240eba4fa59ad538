"""`saelab cache`: help text, errors, and kill -9 mid-run then rerun gives identical checksums."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saelab.cli import app
from saelab.data import ActivationCache, load_corpus, write_cache
from saelab.lm import load_model

HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_attn_out"]

# Runs the CLI with each LM forward slowed down, so the test can kill it mid-run reliably.
SLOW_CLI = """
import sys, time
import saelab.lm.model as model
original = model.LanguageModel.activations
def slow(self, *args, **kwargs):
    time.sleep(0.03)
    return original(self, *args, **kwargs)
model.LanguageModel.activations = slow
from saelab.cli import app
app(sys.argv[1:], prog_name="saelab")
"""


def _args(model_dir: Path, corpus: Path, out: Path) -> list[str]:
    hooks = [arg for hook in HOOKS for arg in ("--hook", hook)]
    return [
        "cache", "--model", str(model_dir), *hooks, "--corpus", str(corpus), "--tokens", "5000",
        "--out", str(out), "--context-size", "32", "--batch-size", "4", "--shard-tokens", "400",
        "--seed", "3", "--device", "cpu",
    ]  # fmt: skip


def _shards_done(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_help_explains_every_option():
    result = CliRunner().invoke(app, ["cache", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--model", "--hook", "--corpus", "--tokens", "--out", "--context-size",
                   "--batch-size", "--shard-tokens", "--device", "--dtype", "--seed", "--json"):  # fmt: skip
        assert option in result.output


def test_bad_hook_is_reported_without_a_traceback(tiny_model, text_corpus_dir, tmp_path):
    args = _args(tiny_model("llama"), text_corpus_dir, tmp_path / "c")
    args[args.index(HOOKS[0])] = "blocks.9.hook_resid_post"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "blocks.9.hook_resid_post" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_kill_9_then_rerun_gives_identical_checksums(tiny_model, text_corpus_dir, tmp_path):
    model_dir, out = tiny_model("llama"), tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, *_args(model_dir, text_corpus_dir, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _shards_done(out) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = _shards_done(out)
    assert 3 <= done < 13, f"the run should be killed mid-way, {done} shards were written"

    result = CliRunner().invoke(app, [*_args(model_dir, text_corpus_dir, out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["tokens"] == 5000

    reference = tmp_path / "reference"
    write_cache(
        load_model(model_dir, device="cpu"), HOOKS, load_corpus(text_corpus_dir), reference, 5000,
        context_size=32, batch_size=4, shard_tokens=400, seed=3,
    )  # fmt: skip
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    ActivationCache(out).verify()
    assert not list(out.glob("*.partial"))
