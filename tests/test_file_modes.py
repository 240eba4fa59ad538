"""Every file and folder saelab writes follows the umask: 0644 / 0755 under umask 022."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import saelab
from saelab.cli import app
from saelab.files import new_file_mode, save_safetensors

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    """{path relative to root: permission bits} of every file and folder under root."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


def _wrong(modes: dict[str, int], root: Path) -> dict[str, str]:
    expected = {True: 0o755, False: 0o644}
    return {
        name: oct(mode) for name, mode in modes.items() if mode != expected[(root / name).is_dir()]
    }


def test_new_files_get_the_umask_mode(tmp_path, umask_022):
    assert new_file_mode(tmp_path) == 0o644
    path = save_safetensors({"x": torch.zeros(3)}, tmp_path / "x.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o077)
    save_safetensors({"x": torch.ones(3)}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]  # no temp files left


def test_saved_sae_cache_run_eval_features_and_dashboard_are_0644(
    tiny_model, text_corpus_dir, tmp_path, umask_022
):
    runner = CliRunner()
    sae = saelab.create_sae("topk", 64, 128, k=8)
    sae.save(tmp_path / "sae")
    cache, run, site = tmp_path / "cache", tmp_path / "run", tmp_path / "site"
    steps = [
        ["cache", "--model", str(tiny_model("llama")), "--hook", HOOK, "--corpus",
         str(text_corpus_dir), "--tokens", "1024", "--out", str(cache), "--context-size", "32",
         "--shard-tokens", "512", "--device", "cpu"],
        ["train", "--cache", str(cache), "--hook", HOOK, "--width", "128", "--tokens", "1024",
         "--batch-size", "128", "--checkpoint-every", "4", "--out", str(run)],
        ["eval", str(run), "--tokens", "256", "--context-size", "32", "--device", "cpu"],
        ["analyze", str(run), "--tokens", "256", "--context-size", "32", "--device", "cpu"],
        ["dashboard", str(run), "--out", str(site)],
    ]  # fmt: skip
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output)
    modes = _modes(tmp_path)
    for written in (
        "sae/sae_weights.safetensors", "sae/cfg.json", "cache/manifest.json",
        "cache/shard_00000", "cache/shard_00001/tokens.npy", "run/config.yaml",
        "run/metrics.jsonl", "run/checkpoints/step_000000008.safetensors",
        "run/sae/sae_weights.safetensors", "run/eval.json", "run/latent_stats.safetensors",
        "run/features.sqlite", "site/index.html",
    ):  # fmt: skip
        assert written in modes, written
    assert _wrong(modes, tmp_path) == {}
