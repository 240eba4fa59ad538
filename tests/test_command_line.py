"""The `saelab` command as a whole: --version, help at 80 columns, a light start, --device checks,
and one-line training warnings in `saelab sweep`."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import typer.main
from typer.testing import CliRunner

import saelab
from saelab.cli import app
from saelab.sae import SAEConfig, jumprelu
from saelab.train import config
from saelab.train.cli_options import TRAIN_FLAGS
from saelab.train.config import TrainConfig
from saelab.train.run_config import RunConfig

HOOK = "blocks.1.hook_resid_post"
COMMANDS = typer.main.get_command(app).commands
DEVICE_COMMANDS = sorted(
    n for n, cmd in COMMANDS.items() if "device" in [p.name for p in cmd.params]
)


def _invoke(args: list[str], columns: int = 200):
    return CliRunner().invoke(app, args, env={"COLUMNS": str(columns)})


def test_version_is_the_package_version():
    result = _invoke(["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"saelab {importlib.metadata.version('saelab')}\n"
    assert saelab.__version__ == importlib.metadata.version("saelab") == "0.1.0"


def test_the_cli_starts_without_torch():
    code = (
        "import sys, saelab.cli; "
        "print([m for m in ('torch', 'transformers', 'datasets', 'numpy', 'fastapi') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"
    script = Path(sys.executable).with_name("saelab")  # the console script of the install
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert all(name in shown.stdout for name in COMMANDS)


def test_import_saelab_keeps_the_public_api():
    assert callable(saelab.train) and saelab.train.__module__ == "saelab.train.trainer"
    sae = saelab.create_sae("relu", 8, 16)
    assert isinstance(sae, saelab.SAE) and isinstance(sae.cfg, saelab.SAEConfig)
    assert saelab.TrainConfig is TrainConfig
    assert callable(saelab.evaluate) and callable(saelab.load_sae) and callable(saelab.load_model)
    assert set(saelab.__all__) <= set(dir(saelab))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_at_80_columns_shows_every_option_in_full(command):
    result = _invoke([command, "--help"], columns=80)
    assert result.exit_code == 0
    names = [o for p in COMMANDS[command].params for o in (*p.opts, *p.secondary_opts)]
    missing = [name for name in names if name.startswith("-") and name not in result.stdout]
    assert missing == []
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def _help_default(name: str) -> str:
    """The `(default: …)` a TRAIN_FLAGS option's help states."""
    help_text = TRAIN_FLAGS[name].__metadata__[0].help
    return re.search(r"\(default: (.*)\)\.$", help_text, re.DOTALL).group(1)


def test_train_help_states_the_defaults_that_apply():
    run, train, sae = RunConfig(), TrainConfig(), SAEConfig("jumprelu", 1, 1)
    assert _help_default("tokens") == str(run.tokens)
    assert _help_default("corpus") == run.corpus
    assert _help_default("arch") == ",".join(run.archs)
    assert _help_default("k") == ",".join(map(str, run.k))
    assert _help_default("context_size") == str(run.context_size)
    assert _help_default("model_dtype") == run.model_dtype
    assert _help_default("checkpoint_every") == str(run.checkpoint_every)
    assert _help_default("out") == run.out
    # Budget defaults are rules of the run's tokens and width: the help states the rule.
    batch = _help_default("batch_size")
    assert f"tokens/{config.BUDGET_STEPS}" in batch and f"[{config.MIN_BATCH}, " in batch
    assert f"{config.MAX_BATCH} with --recipe paper" in batch
    assert train.batch_size == config.budget_batch_size(train.total_tokens)
    lr, short = _help_default("lr"), lambda v: f"{v:.0e}".replace("e-0", "e-")
    assert lr.startswith(f"{short(config.BUDGET_LR)} × √(batch/{config.BUDGET_LR_BATCH})")
    assert f"√({config.BUDGET_LR_WIDTH}/width), at most {short(config.MAX_BUDGET_LR)}" in lr
    assert f"thresholds train at {config.BUDGET_OFFSET_LR_SCALE:g}× of it" in lr
    assert _help_default("seed") == str(train.seed)
    assert _help_default("device") == train.device
    assert _help_default("matmul_dtype") == train.matmul_dtype
    bandwidth = _help_default("bandwidth")
    assert bandwidth.startswith(f"{jumprelu.BANDWIDTH_FRACTION:g} × the initial threshold")
    assert f"{jumprelu.PAPER_BANDWIDTH:g} with --recipe paper" in bandwidth
    assert sae.bandwidth is None  # derived from the data at init
    assert _help_default("sparsity") == "the architecture's recipe"
    shown = _invoke(["train", "--help"], columns=80).stdout
    assert "(default: 2000000)" in shown and "(default: jumprelu)" in shown


def _required_args(command: str, tmp_path: Path) -> list[str]:
    """Placeholder values for the command's required arguments and options."""
    args: list[str] = []
    for param in COMMANDS[command].params:
        if param.required:
            value = str(tmp_path / "out") if param.name == "out" else "1"
            args += [value] if param.param_type_name == "argument" else [param.opts[0], value]
    return args


DEVICE_ERRORS = [
    ("tpu9", "unknown device 'tpu9'; valid: cpu, cuda, cuda:N or mps"),
    pytest.param(
        "cuda",
        "device 'cuda': CUDA is not available on this machine; use cpu",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
    ),
]


@pytest.mark.parametrize(("device", "message"), DEVICE_ERRORS)
@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_an_unusable_device_is_one_line_before_anything_runs(command, device, message, tmp_path):
    extra = (
        ["--hook", HOOK, "--cache", str(tmp_path / "cache")]
        if command in ("train", "sweep")
        else []
    )
    result = _invoke([command, "--device", device, *_required_args(command, tmp_path), *extra])
    assert result.exit_code == 1
    assert result.stderr == f"Error: {message}\n"
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_every_command_with_a_model_takes_a_checked_device():
    with_model = [
        "ablate", "analyze", "attribute", "cache", "contrast", "eval", "explain", "prompt", "serve",
    ]  # fmt: skip
    assert [*with_model, "steer", "sweep", "train"] == DEVICE_COMMANDS


def test_sweep_prints_training_warnings_as_one_line_each(tiny_model, text_corpus_dir, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "run"
    made = _invoke(["cache", "--model", str(tiny_model("llama")), "--hook", HOOK, "--tokens", "512",
                    "--corpus", str(text_corpus_dir), "--context-size", "24", "--out", str(cache)])  # fmt: skip
    assert made.exit_code == 0, made.output
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _invoke(["sweep", "--cache", str(cache), "--hook", HOOK, "--arch", "topk", "--k", "4",
                          "--width", "64", "--tokens", "1000", "--batch-size", "128",
                          "--eval-tokens", "64", "--eval-batch-size", "4", "--out", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]
    assert warned == [
        "Warning: --tokens 1,000 is not a multiple of --batch-size 128; training 896 tokens (7 steps)",
        f"Warning: the cache {cache} holds 512 tokens but the run trains on 896; the data will be "
        "cycled (1.8 epochs)",
    ]
    assert not [w for w in caught if "--tokens" in str(w.message) or "cycled" in str(w.message)]
    assert json.loads(result.stdout)["rows"][0]["name"] == "topk-k4"
