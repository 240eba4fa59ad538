"""An unreachable hub fails a model or dataset name in seconds, with one clear line, not 30-50 s of retries."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from huggingface_hub import constants
from typer.testing import CliRunner

from saelab.cli import app
from saelab.data import CorpusNotFoundError, load_corpus
from saelab.lm import ModelNotFoundError, load_model
from saelab.lm.hub import PROBE_TIMEOUT_S, HubLookupError, check_hub_access

MODEL_VALID = (
    "Valid: a built-in alias (gemma-3-270m), a local directory with config.json "
    "(save_pretrained output), a .gguf file, or a Hugging Face hub id."
)
CORPUS_VALID = (
    "Valid: a built-in corpus (python-stdlib), a local .txt/.jsonl/.parquet file or folder, a "
    "folder written by datasets' save_to_disk, or a Hugging Face `datasets` name (NAME or "
    "NAME:CONFIG)."
)
# Times the lookups only (transformers and datasets are imported first): both must fail fast.
LOOKUPS = """
import json, sys, time
import datasets, transformers
from saelab.data import load_corpus
from saelab.lm import load_model
result = {}
for what, load, name in (("model", load_model, "no-org/no-model"), ("corpus", load_corpus, "no-org/no-data:en")):
    start = time.perf_counter()
    try:
        load(name)
    except LookupError as error:
        result[what] = [str(error), time.perf_counter() - start]
print(json.dumps(result))
"""


def _refused_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _silent_port() -> Iterator[int]:
    """A 127.0.0.1 port that accepts connections (kernel backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def _lookups(endpoint: str, hub_cache: Path) -> dict[str, list]:
    offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in offline}
    env |= {"HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(hub_cache)}
    done = subprocess.run(
        [sys.executable, "-c", LOOKUPS], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("stub", ["refused", "silent"])
def test_unreachable_hub_fails_fast_naming_the_model_and_the_dataset(stub, tmp_path):
    if stub == "refused":
        endpoint = f"http://127.0.0.1:{_refused_port()}"
        result = _lookups(endpoint, tmp_path)
        reason = str(ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)))
    else:
        with _silent_port() as port:
            endpoint = f"http://127.0.0.1:{port}"
            result = _lookups(endpoint, tmp_path)
        reason = f"no answer within {PROBE_TIMEOUT_S:g} s"
    why = f"the Hugging Face hub at {endpoint} cannot be reached ({reason}), and it is not in the local cache {tmp_path}."
    assert result["model"][0] == f"Cannot load model 'no-org/no-model': {why} {MODEL_VALID}"
    assert result["corpus"][0] == f"Cannot load corpus 'no-org/no-data:en': {why} {CORPUS_VALID}"
    for _, seconds in result.values():
        assert seconds < 5.0


OFFLINE_WHY = (
    "the Hugging Face hub is off (HF_HUB_OFFLINE is set), and it is not in the local cache "
    f"{constants.HF_HUB_CACHE}."
)


def test_offline_mode_is_honoured_without_a_request():
    assert constants.HF_HUB_OFFLINE  # tests/conftest.py sets HF_HUB_OFFLINE=1
    with pytest.raises(ModelNotFoundError) as model_error:
        load_model("no-org/no-model-xyz")
    assert str(model_error.value) == (
        f"Cannot load model 'no-org/no-model-xyz': {OFFLINE_WHY} {MODEL_VALID}"
    )
    with pytest.raises(CorpusNotFoundError) as corpus_error:
        load_corpus("no-org/no-data-xyz")
    assert str(corpus_error.value) == (
        f"Cannot load corpus 'no-org/no-data-xyz': {OFFLINE_WHY} {CORPUS_VALID}"
    )


def test_a_cached_name_is_read_from_the_cache_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubLookupError):
        check_hub_access("org/model", "model")
    (tmp_path / "models--org--model" / "snapshots" / "0123abcd").mkdir(parents=True)
    (tmp_path / "datasets--org--data" / "snapshots" / "0123abcd").mkdir(parents=True)
    assert check_hub_access("org/model", "model") is False  # False: from the cache only
    assert check_hub_access("org/data", "dataset") is False
    with pytest.raises(HubLookupError):
        check_hub_access("org/data", "model")


def test_cache_command_reports_an_unreachable_name_in_one_line(tmp_path):
    runner = CliRunner()
    base = ["cache", "--hook", "blocks.0.hook_resid_post", "--tokens", "64", "--out"]
    model = runner.invoke(app, [*base, str(tmp_path / "a"), "--model", "no-org/no-model-xyz"])
    assert model.exit_code == 1
    assert model.stderr == (
        f"Error: Cannot load model 'no-org/no-model-xyz': {OFFLINE_WHY} {MODEL_VALID}\n"
    )
    corpus = runner.invoke(
        app, [*base, str(tmp_path / "b"), "--model", "unused", "--corpus", "no-org/no-data-xyz"]
    )
    assert corpus.exit_code == 1
    assert corpus.stderr == (
        f"Error: Cannot load corpus 'no-org/no-data-xyz': {OFFLINE_WHY} {CORPUS_VALID}\n"
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_name_that_is_neither_a_path_nor_a_hub_name_fails_without_a_lookup():
    with pytest.raises(ModelNotFoundError) as model_error:
        load_model("no such/model")
    assert str(model_error.value).startswith(
        "Cannot load model 'no such/model': no such local path, and not a hub name ("
    )
    with pytest.raises(CorpusNotFoundError) as corpus_error:
        load_corpus("a/b/c")
    assert str(corpus_error.value).startswith(
        "Cannot load corpus 'a/b/c': no such local path, and not a hub name ("
    )
