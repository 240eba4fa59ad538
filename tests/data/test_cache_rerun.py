"""A `saelab cache` that fails before its first shard leaves nothing that blocks a rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saelab.cli import app
from saelab.data import ActivationCache, CacheMismatchError, load_corpus, write_cache
from saelab.lm.model import LanguageModel

HOOK = "blocks.1.hook_resid_post"
OPTIONS = {"context_size": 32, "batch_size": 3, "shard_tokens": 300, "seed": 2}


class _Injected(Exception):
    pass


def _cache_args(model_dir: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "cache", "--model", str(model_dir), "--hook", HOOK, "--corpus", str(corpus),
        "--tokens", "500", "--out", str(out), "--context-size", "32", "--batch-size", "3",
        "--shard-tokens", "300", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_a_wrong_text_field_then_the_right_one_into_the_same_folder(tiny_model, tmp_path):
    corpus = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"body": f"def f{i}(x):\n    return x * {i} + {i % 7}\n"}) for i in range(60)
    ]
    corpus.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cache"
    runner = CliRunner()
    failed = runner.invoke(app, _cache_args(tiny_model("llama"), corpus, out))
    assert failed.exit_code == 1
    assert failed.stderr.splitlines()[-1] == (  # after the model-loading and progress bars
        f"Error: {corpus}:1: no field 'text' (found ['body']); pick one with text_field."
    )
    done = runner.invoke(app, _cache_args(tiny_model("llama"), corpus, out, "--text-field", "body"))
    assert done.exit_code == 0, done.output
    cache = ActivationCache(out)
    assert cache.tokens == 500 and cache.config["text_field"] == "body"


def test_a_failure_before_the_first_shard_then_the_same_command(
    tiny_lm, text_corpus_dir, tmp_path, monkeypatch
):
    corpus = load_corpus(text_corpus_dir)
    reference = write_cache(tiny_lm, HOOK, corpus, tmp_path / "reference", 500, **OPTIONS)

    def fail(*_args, **_kwargs):
        raise _Injected

    out = tmp_path / "cache"
    with monkeypatch.context() as patch:
        patch.setattr(LanguageModel, "activations", fail)
        with pytest.raises(_Injected):
            write_cache(tiny_lm, HOOK, corpus, out, 500, **OPTIONS)
    assert json.loads((out / "manifest.json").read_text())["shards"] == []
    rerun = write_cache(tiny_lm, HOOK, corpus, out, 500, **OPTIONS)
    assert rerun.tokens == 500
    assert (out / "manifest.json").read_bytes() == (reference.path / "manifest.json").read_bytes()


def test_a_failure_after_a_shard_still_resumes_and_guards_its_config(
    tiny_lm, text_corpus_dir, tmp_path
):
    corpus = load_corpus(text_corpus_dir)

    def stop_after_one_shard(done: int, _total: int) -> None:
        if done >= 300:
            raise _Injected

    out = tmp_path / "cache"
    with pytest.raises(_Injected):
        write_cache(tiny_lm, HOOK, corpus, out, 500, on_progress=stop_after_one_shard, **OPTIONS)
    assert len(ActivationCache(out, allow_incomplete=True).shards) == 1
    with pytest.raises(CacheMismatchError, match="seed"):
        write_cache(tiny_lm, HOOK, corpus, out, 500, **{**OPTIONS, "seed": 3})
    assert write_cache(tiny_lm, HOOK, corpus, out, 500, **OPTIONS).tokens == 500
