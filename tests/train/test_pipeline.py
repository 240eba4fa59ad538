"""`saelab train`: run directory, lockstep sweeps from one LM pass, checkpoints, exact resume."""

import json
import os
import pickle
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
    assert len(list((out / "checkpoints").glob("step_*.safetensors"))) == 2
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
    from saelab.train.cli_options import TRAIN_FLAGS, run_config_from_flags

    flags = dict.fromkeys(set(TRAIN_FLAGS) - {"config", "sparsity"})
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


def test_target_l0_sweep_and_paper_recipe_from_flags():
    """--target-l0 sweeps JumpReLU like --k; --recipe paper switches the init and loss back."""
    from saelab.train.cli_options import TRAIN_FLAGS, run_config_from_flags
    from saelab.train.pipeline import member_layout

    flags = dict.fromkeys(set(TRAIN_FLAGS) - {"config"})
    given = {"hook": [HOOK], "cache": "c", "arch": "jumprelu,topk", "k": "8"}
    cfg = run_config_from_flags(resume=None, config=None, **flags | given | {"target_l0": "16,32"})
    sweep = cfg.sweep()
    assert [(arch, o.get("target_l0"), o.get("k")) for _, arch, o, _ in sweep] == [
        ("jumprelu", 16.0, None),
        ("jumprelu", 32.0, None),
        ("topk", None, 8),
    ]
    names = [name for name, _ in member_layout(cfg, Path("out"))]
    assert names == ["jumprelu-l0t16", "jumprelu-l0t32", "topk-k8"]
    paper = run_config_from_flags(resume=None, config=None, **flags | given | {"recipe": "paper"})
    options = paper.sweep()[0][2]
    assert options["sparsity_loss"] == "l0" and options["b_dec_init"] == "zeros"
    assert paper.train_config("jumprelu", None).batch_size == 4096


def test_matryoshka_group_sizes_and_k_from_flags(tmp_path):
    """--group-sizes reaches the matryoshka SAEs only; a split not summing to --width is a
    one-line error from saelab train."""
    from saelab.train.cli_options import TRAIN_FLAGS, run_config_from_flags

    flags = dict.fromkeys(set(TRAIN_FLAGS) - {"config"})
    given = {"hook": [HOOK], "cache": "c", "arch": "matryoshka,batchtopk", "k": "4,8"}
    cfg = run_config_from_flags(resume=None, config=None, **flags | given | {"group_sizes": "8,24"})
    assert [(arch, o.get("k"), o.get("group_sizes")) for _, arch, o, _ in cfg.sweep()] == [
        ("matryoshka", 4, [8, 24]),
        ("matryoshka", 8, [8, 24]),
        ("batchtopk", 4, None),
        ("batchtopk", 8, None),
    ]
    with pytest.raises(ValueError, match=r"group_sizes=\[8, 24\].*summing to d_sae=64"):
        saelab.create_sae("matryoshka", 16, 64, **cfg.sweep()[0][2])


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
    while (
        time.time() < deadline
        and len(list((killed / "checkpoints").glob("step_*.safetensors"))) < 2
    ):
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
    ckpts = sorted((out / "checkpoints").glob("step_*.safetensors"))
    assert [p.name for p in ckpts] == ["step_000000020.safetensors", "step_000000040.safetensors"]
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:1000])
    (out / "jumprelu-lam0.01" / "sae" / "cfg.json").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "saelab.cli", "train", "--resume", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "unreadable checkpoint" in result.stderr and "step_000000020.safetensors" in result.stdout
    )


def _small_cache_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--cache", str(cache), "--hook", HOOK, "--width", "32", "--lr", "1e-3",
        "--batch-size", "256", "--out", str(out), *extra,
    ]  # fmt: skip


def _pickle_payload(marker: Path) -> bytes:
    """Pickle bytes whose unpickling runs code (it creates `marker`)."""

    class Exploit:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    return pickle.dumps(Exploit())


def test_planted_pickle_checkpoint_is_not_run_on_resume(small_cache, tmp_path):
    out = tmp_path / "run"
    first = runner.invoke(
        app, _small_cache_args(small_cache, out, "--tokens", "2560", "--checkpoint-every", "4")
    )
    assert first.exit_code == 0, first.output
    ckpts = out / "checkpoints"
    (out / "sae" / "cfg.json").unlink()  # as if killed while saving: the run is not finished
    marker = tmp_path / "pwned"
    for name in ("step_000000098.pt", "step_000000099.safetensors"):
        (ckpts / name).write_bytes(_pickle_payload(marker))
    resumed = runner.invoke(app, ["train", "--resume", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert not marker.exists()
    warnings = resumed.stderr.splitlines()[:2]
    assert warnings[0].startswith(
        f"Warning: {ckpts / 'step_000000099.safetensors'}: unreadable checkpoint ("
    )
    assert warnings[1] == (
        f"Warning: {ckpts / 'step_000000098.pt'}: old-format (pickled) checkpoint; "
        "saelab does not unpickle them; trying the previous one"
    )
    assert f"resumed from {ckpts / 'step_000000008.safetensors'} at step 8" in resumed.stdout
    assert saelab.load_sae(out).cfg.d_sae == 32

    (out / "sae" / "cfg.json").unlink()
    for good in ckpts.glob("step_00000000[48].safetensors"):
        good.unlink()
    stopped = runner.invoke(app, ["train", "--resume", str(out)])
    assert stopped.exit_code == 1 and not marker.exists()
    assert stopped.stderr.splitlines()[-1] == (
        f"Error: {ckpts}: no loadable checkpoint to resume from (rejected: "
        "step_000000099.safetensors, step_000000098.pt); delete these files to restart the run "
        "from step 0, or train into a new --out"
    )


def _expected_final(directory: Path, steps: int) -> dict[str, float]:
    """What the final table should show, recomputed from metrics.jsonl."""
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    last = rows[-steps:]
    return {
        "l0": sum(r["l0"] for r in last) / steps,
        "fvu": sum(r["fvu"] for r in last) / steps,
        "dead_fraction": last[-1]["dead_fraction"],
        "steps_averaged": steps,
        "dead_window_tokens": 500,  # 5% of the 10,000-token budget (SPEC §2.2 window, scaled)
    }


def test_rounding_to_a_derived_batch_size_is_a_note_not_a_warning(small_cache, tmp_path):
    args = ["train", "--cache", str(small_cache), "--hook", HOOK, "--width", "32"]
    args += ["--arch", "topk", "--k", "8", "--tokens", "10000", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        "--tokens 10,000 is not a multiple of the batch size derived from it, 256; "
        "training 9,984 tokens (39 steps)"
    ) in result.stdout.splitlines()  # with the other progress notes
    assert "not a multiple" not in result.stderr


def test_train_reports_progress_warnings_a_final_table_and_json(small_cache, tmp_path):
    from saelab.data.cache_reader import ActivationCache

    cached = ActivationCache(small_cache).tokens
    args = ["--arch", "jumprelu,topk", "--k", "8", "--tokens", "10000", "--checkpoint-every", "7"]
    warnings = [
        "Warning: --tokens 10,000 is not a multiple of --batch-size 256; "
        "training 9,984 tokens (39 steps)",
        f"Warning: the cache {small_cache} holds {cached:,} tokens but the run trains on 9,984; "
        f"the data will be cycled ({9984 / cached:.1f} epochs)",
    ]
    out = tmp_path / "run"
    result = runner.invoke(app, _small_cache_args(small_cache, out, *args))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[:2] == warnings
    assert "9984/9984 tokens" in result.stderr  # the bar ends full, though 39 < log_every
    assert "jumprelu-default: L0" in result.stderr and "topk-k8: L0" in result.stderr
    header = (
        "Final metrics (L0, FVU: mean over the last 39 training steps; "
        "dead: no firing in the last 500 tokens)"
    )
    names = ("jumprelu-default", "topk-k8")
    table = [header, f"{'member':<16}  {'L0':>8}  {'FVU':>7}  {'dead':>6}  SAE"]
    for name in names:
        f = _expected_final(out / name, 39)
        table.append(
            f"{name:<16}  {f['l0']:>8.2f}  {f['fvu']:>7.4f}  {f['dead_fraction']:>6.1%}  "
            f"{out / name / 'sae'}"
        )
    assert result.stdout.splitlines()[-4:] == table

    as_json = runner.invoke(app, [*_small_cache_args(small_cache, tmp_path / "j", *args), "--json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)  # stdout holds only the JSON; progress is on stderr
    assert as_json.stderr.splitlines()[:2] == warnings and "9984/9984" in as_json.stderr
    assert report == {
        "run": str(tmp_path / "j"),
        "saes": {n: str(tmp_path / "j" / n / "sae") for n in names},
        "final": {n: _expected_final(tmp_path / "j" / n, 39) for n in names},
    }

    def snapshot() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in out.rglob("*")}

    before = snapshot()
    finished = "run {} is already finished (9,984 tokens); nothing to do"
    again = runner.invoke(app, ["train", "--resume", str(out)])
    assert again.exit_code == 0, again.output
    assert again.stdout == finished.format(out) + "\n"
    again_json = runner.invoke(app, ["train", "--resume", str(out), "--json"])
    assert again_json.exit_code == 0, again_json.output
    assert json.loads(again_json.stdout) == {"run": str(out), "already_finished": True}
    assert again_json.stderr == finished.format(out) + "\n"
    assert snapshot() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model-dtype", "float8"],
            "model_dtype: unknown dtype 'float8'; valid: float32, fp32, float16, fp16, bfloat16, bf16",
        ),
        (["--device", "tpu9"], "unknown device 'tpu9'; valid: cpu, cuda, cuda:N or mps"),
        pytest.param(
            ["--device", "cuda"],
            "device 'cuda': CUDA is not available on this machine; use cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_bad_model_dtype_and_device_fail_before_anything_is_loaded(
    args, message, tmp_path, monkeypatch
):
    from saelab.train import pipeline

    monkeypatch.setattr(pipeline, "open_activations", lambda *a: pytest.fail("data was opened"))
    out = tmp_path / "run"
    result = runner.invoke(
        app, _small_cache_args(tmp_path / "cache", out, "--tokens", "1024", *args)
    )
    assert result.exit_code == 1
    assert result.stderr == f"Error: {message}\n"
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--arch", "jumprelu,nope"],
            "arch: unknown architecture 'nope'; valid: ['batchtopk', 'gated', 'jumprelu', 'matryoshka', "
            "'matryoshka_jumprelu', 'relu', 'topk']",
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
