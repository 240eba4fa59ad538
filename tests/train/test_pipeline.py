"""`saelab train`: run directory, lockstep sweeps from one LM pass, checkpoints, exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import saelab
from saelab.cli import app
from saelab.train.pipeline import run_training
from saelab.train.run_config import resolve_run_config

HOOK = "blocks.1.hook_resid_post"
runner = CliRunner()


def _train_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", str(model), "--hook", HOOK, "--corpus", str(corpus),
        "--width", "64", "--tokens", "2048", "--batch-size", "128", "--lr", "1e-3",
        "--context-size", "32", "--out", str(out), *extra,
    ]  # fmt: skip


def test_cli_train_writes_the_documented_run_directory(tiny_model, text_corpus_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app, [*_train_args(tiny_model("llama"), text_corpus_dir, out), "--checkpoint-every", "4"]
    )
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["hooks"] == [HOOK] and cfg["width"] == 64 and cfg["train"]["lr"] == 1e-3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(16))
    assert {"loss", "l0", "fvu", "dead_fraction", "mse_loss"} <= set(rows[-1])
    assert (out / "plots" / "training.png").stat().st_size > 1000
    assert len(list((out / "checkpoints").glob("step_*.pt"))) == 2
    sae = saelab.load_sae(out)
    assert sae.cfg.hook_name == HOOK and sae.cfg.d_sae == 64 and sae.cfg.normalization_constant > 0
    again = runner.invoke(app, _train_args(tiny_model("llama"), text_corpus_dir, out))
    assert again.exit_code == 1 and "already holds a run" in again.output


def test_sweep_of_three_archs_by_two_settings_reads_the_lm_once_per_batch(
    tiny_model, text_corpus_dir, tmp_path, monkeypatch
):
    from saelab.lm.model import LanguageModel

    calls = []
    original = LanguageModel.activations

    def counting(self, input_ids, hooks, *args, **kwargs):
        calls.append(len(input_ids))
        return original(self, input_ids, hooks, *args, **kwargs)

    monkeypatch.setattr(LanguageModel, "activations", counting)
    common = {
        "model": str(tiny_model("llama")),
        "hooks": [HOOK],
        "corpus": str(text_corpus_dir),
        "width": 32,
        "tokens": 1024,
        "batch_size": 128,
        "lr": 1e-3,
        "context_size": 32,
    }
    run_training(
        resolve_run_config(None, common | {"out": str(tmp_path / "one")}),
        progress=False,
        log=lambda m: None,
    )
    single = len(calls)
    calls.clear()
    sweep = common | {
        "out": str(tmp_path / "sweep"),
        "archs": ["jumprelu", "topk", "gated"],
        "sparsity": [0.01, 0.1],
        "k": [4, 8],
    }
    members = run_training(resolve_run_config(None, sweep), progress=False, log=lambda m: None)
    assert len(calls) == single > 0
    assert sorted(m.name for m in members) == sorted(
        [
            "jumprelu-lam0.01",
            "jumprelu-lam0.1",
            "topk-k4",
            "topk-k8",
            "gated-lam0.01",
            "gated-lam0.1",
        ]
    )
    for m in members:
        assert (m.directory / "sae" / "cfg.json").exists() and (
            m.directory / "metrics.jsonl"
        ).exists()
    lam = {
        m.name: json.loads((m.directory / "metrics.jsonl").read_text().splitlines()[-1])[
            "sparsity_coefficient"
        ]
        for m in members
    }
    assert lam["jumprelu-lam0.1"] == pytest.approx(0.1) and lam["gated-lam0.01"] == pytest.approx(
        0.01
    )


def test_per_architecture_sparsity_lists_from_flags():
    from saelab.train.cli_options import run_config_from_flags

    flags = dict.fromkeys(
        ["model", "hook", "corpus", "width", "tokens", "batch_size", "lr", "bandwidth", "seed",
         "device", "model_dtype", "context_size", "checkpoint_every", "logger", "max_memory_gb",
         "out"]
    )  # fmt: skip
    cfg = run_config_from_flags(
        resume=None,
        config=None,
        **flags | {"hook": [HOOK], "cache": "c", "arch": "jumprelu,gated,topk", "k": "8"},
        sparsity="jumprelu:0.001,jumprelu:0.01,gated:0.3",
    )
    assert [(arch, options.get("k"), lam) for _, arch, options, lam in cfg.sweep()] == [
        ("jumprelu", None, 0.001),
        ("jumprelu", None, 0.01),
        ("gated", None, 0.3),
        ("topk", 8, None),
    ]


def test_two_hooks_train_side_by_side_from_one_stream(tiny_model, text_corpus_dir, tmp_path):
    cfg = resolve_run_config(
        None,
        {
            "model": str(tiny_model("llama")),
            "hooks": ["blocks.0.hook_resid_post", HOOK],
            "corpus": str(text_corpus_dir),
            "width": 32,
            "tokens": 512,
            "batch_size": 128,
            "context_size": 32,
            "out": str(tmp_path / "r"),
        },
    )
    members = run_training(cfg, progress=False, log=lambda m: None)
    assert [m.sae.cfg.hook_name for m in members] == ["blocks.0.hook_resid_post", HOOK]
    norms = [m.sae.cfg.normalization_constant for m in members]
    assert norms[0] != norms[1]  # each hook is normalised on its own (SPEC §1)


@pytest.fixture(scope="module")
def small_cache(tiny_model, text_corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    result = runner.invoke(
        app,
        [
            "cache",
            "--model",
            str(tiny_model("llama")),
            "--hook",
            HOOK,
            "--corpus",
            str(text_corpus_dir),
            "--tokens",
            "6000",
            "--context-size",
            "32",
            "--shard-tokens",
            "2048",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def _cache_train_cmd(cache: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "saelab.cli",
        "train",
        "--cache",
        str(cache),
        "--hook",
        HOOK,
        "--arch",
        "jumprelu,topk",
        "--k",
        "8",
        "--sparsity",
        "0.01",
        "--width",
        "128",
        "--tokens",
        "64000",
        "--batch-size",
        "256",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "20",
        "--out",
        str(out),
    ]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(small_cache, tmp_path):
    env = os.environ | {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(
        _cache_train_cmd(small_cache, straight), check=True, env=env, capture_output=True
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cache_train_cmd(small_cache, killed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "checkpoints").glob("step_*.pt"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "jumprelu-lam0.01" / "sae").exists(), (
        "the run finished before it was killed"
    )
    resumed = subprocess.run(
        [sys.executable, "-m", "saelab.cli", "train", "--resume", str(killed)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    for name in ("jumprelu-lam0.01", "topk-k8"):
        a = load_file(str(straight / name / "sae" / "sae_weights.safetensors"))
        b = load_file(str(killed / name / "sae" / "sae_weights.safetensors"))
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
        lines_a = (straight / name / "metrics.jsonl").read_text().splitlines()
        lines_b = (killed / name / "metrics.jsonl").read_text().splitlines()
        assert lines_a == lines_b


def test_truncated_checkpoint_falls_back_to_the_previous_one(small_cache, tmp_path):
    out = tmp_path / "run"
    cmd = [a for a in _cache_train_cmd(small_cache, out)]
    cmd[cmd.index("64000")] = "12800"
    subprocess.run(cmd, check=True, capture_output=True)
    ckpts = sorted((out / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_000000020.pt", "step_000000040.pt"]
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:1000])
    (out / "jumprelu-lam0.01" / "sae" / "cfg.json").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "saelab.cli", "train", "--resume", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "unreadable checkpoint" in result.stderr and "step_000000020.pt" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--arch", "jumprelu,nope"],
            "arch: unknown architecture 'nope'; valid: ['batchtopk', 'gated', 'jumprelu', 'relu', 'topk']",
        ),
        (["--width", "0"], "width: must be an integer ≥ 1, got 0"),
        (["--sparsity", "-0.5"], "sparsity: coefficients must be ≥ 0, got -0.5"),
        (["--sparsity", "gated:0.1"], "sparsity: values given for ['gated'], which are not in"),
        (["--hook", "blocks.9.hook_resid_post"], "blocks.9.hook_resid_post"),
    ],
)
def test_bad_flags_fail_before_any_work(args, message, tiny_model, text_corpus_dir, tmp_path):
    base = _train_args(tiny_model("llama"), text_corpus_dir, tmp_path / "run")
    if args[0] == "--hook":
        base[base.index(HOOK)] = args[1]
        args = []
    result = runner.invoke(app, [*base, *args])
    assert result.exit_code == 1
    assert message in result.output
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_bad_config_file_and_foreign_cache_fail_clearly(small_cache, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump({"cache": str(small_cache), "hooks": [HOOK], "learning_rate": 0.1})
    )
    result = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "a")])
    assert result.exit_code == 1 and "unknown key(s) ['learning_rate']" in result.output
    toml = tmp_path / "run.toml"
    toml.write_text(f'cache = "{small_cache}"\nhooks = ["{HOOK}"]\nmodel = "some-other-model"\n')
    result = runner.invoke(app, ["train", "--config", str(toml), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "some-other-model" in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_two_process_gloo_ddp_equals_one_process(small_cache, tmp_path):
    args = ["train", "--cache", str(small_cache), "--hook", HOOK, "--arch", "jumprelu,relu",
            "--sparsity", "0.01", "--width", "128", "--tokens", "10240", "--batch-size", "256",
            "--lr", "1e-3", "--checkpoint-every", "1000"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "saelab.cli", *args, "--out", str(single)],
        check=True,
        env=env,
        capture_output=True,
    )
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         "-m", "saelab.cli", *args, "--out", str(ddp)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data parallel over 2 processes" in result.stdout
    for name in ("jumprelu-lam0.01", "relu-lam0.01"):
        a = load_file(str(single / name / "sae" / "sae_weights.safetensors"))
        b = load_file(str(ddp / name / "sae" / "sae_weights.safetensors"))
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
