"""`saelab sweep`: multi-SAE evaluation equals single evaluations, Pareto plots, files, resume."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from typer.testing import CliRunner

import saelab
from saelab.cli import app
from saelab.data.corpora import load_corpus
from saelab.evals import SplicedEvaluator
from saelab.evals.multi import EvalTarget, evaluate_targets
from saelab.evals.pareto import draw_pareto
from saelab.evals.settings import EvalSettings
from saelab.evals.spliced import MultiSplicedEvaluator
from saelab.evals.sweep_table import CSV_COLUMNS, read_csv
from saelab.formats.errors import SAEFileError

HOOK = "blocks.1.hook_resid_post"
PAD, BOS, EOS = 0, 1, 2
PNG = b"\x89PNG\r\n\x1a\n"
MEMBERS = ["jumprelu-lam0.01", "jumprelu-lam0.1", "topk-k4", "topk-k16"]


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 512, (3, 16), generator=g)
    ids[:, 0] = BOS
    ids[0, 6] = EOS
    return ids


def _saes() -> list[saelab.SAE]:
    saes = [
        saelab.create_sae("topk", 64, 256, k=8, seed=0),
        saelab.create_sae("jumprelu", 64, 128, seed=1),
        saelab.create_sae("gated", 64, 128, seed=2),
    ]
    with torch.no_grad():
        saes[1].threshold.fill_(0.05)
    return saes


class BrokenSAE(saelab.SAE):
    """An SAE whose encoder raises, to check that one failure spares the others."""

    architecture = "broken-test"

    def __init__(self) -> None:
        super().__init__(saelab.SAEConfig("jumprelu", 64, 8))

    def encode(self, x):
        raise RuntimeError("encoder exploded")

    def decode(self, f):
        raise AssertionError("not reached")

    def train_forward(self, x, sparsity_coefficient, dead_mask=None):
        raise AssertionError("not used")


def test_multi_sae_evaluator_equals_evaluating_each_sae_alone(tiny_lm, ids, monkeypatch):
    from saelab.lm import prefix

    passes = []
    original = prefix.final_hidden_states
    monkeypatch.setattr(
        prefix, "final_hidden_states", lambda *a, **kw: passes.append(1) or original(*a, **kw)
    )
    saes = _saes()
    multi = MultiSplicedEvaluator(saes, tiny_lm, HOOK)
    for batch in ids.split(2):
        multi.update(batch)
    assert len(passes) == 2 * (2 + len(saes))  # per batch: clean, zero ablation, one per SAE
    together = multi.results()
    passes.clear()
    for sae, got in zip(saes, together, strict=True):
        alone = SplicedEvaluator(sae, tiny_lm, HOOK)
        for batch in ids.split(2):
            alone.update(batch)
        want = alone.result()
        assert set(got) == set(want)
        for key, value in want.items():
            if math.isnan(value):
                assert math.isnan(got[key]), key
            else:
                assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert len(passes) == 2 * 3 * len(saes)  # alone: three passes per batch per SAE
    assert len({r["ce_sae"] for r in together}) == 3  # the SAEs differ; the shared runs agree
    assert len({(r["ce_clean"], r["ce_zero"], r["n_predictions"]) for r in together}) == 1


def test_a_failing_sae_does_not_lose_the_others(tiny_lm, tmp_path):
    saes = [*_saes()[:2], BrokenSAE()]
    targets = [
        EvalTarget(f"sae{i}", sae, HOOK, tmp_path / f"sae{i}", tmp_path / f"sae{i}" / "eval.json")
        for i, sae in enumerate(saes)
    ]
    settings = EvalSettings(load_corpus("python-stdlib"), 120, context_size=32, batch_size=2)
    messages = []
    reports, failures = evaluate_targets(tiny_lm, "tiny", targets, settings, messages.append)
    assert set(reports) == {"sae0", "sae1"} and list(failures) == ["sae2"]
    assert "encoder exploded" in failures["sae2"] and "sae2" in messages[0]
    assert not (tmp_path / "sae2" / "eval.json").exists()
    for name in ("sae0", "sae1"):
        written = json.loads((tmp_path / name / "eval.json").read_text())
        assert written == reports[name] and written["n_tokens"] >= 120
        assert written["eval_config"]["tokens"] == 120 and written["eval_config"]["hook"] == HOOK


def _row(arch: str, setting: dict, l0: float, delta: float) -> dict:
    return {"arch": arch, "hook": HOOK, "sparsity": None, "k": None, "l0": l0,
            "delta_lm_loss": delta, "fvu": 0.5} | setting  # fmt: skip


def test_pareto_axes_have_a_log_x_axis_and_one_sorted_labelled_curve_per_arch():
    rows = [
        _row("topk", {"k": 32}, 32.0, 0.1),
        _row("topk", {"k": 8}, 8.0, 0.4),
        _row("jumprelu", {"sparsity": 0.001}, 40.0, 0.05),
        _row("jumprelu", {"sparsity": 0.01}, 10.0, 0.2),
        _row("jumprelu", {"sparsity": 1.0}, 0.0, 2.0),  # L0 = 0 cannot sit on a log axis
        _row("gated", {"sparsity": 0.01}, 12.0, None),  # undefined metric: left out
    ]
    axes = draw_pareto(Figure().add_subplot(), rows, "delta_lm_loss")
    assert axes.get_xscale() == "log"
    assert "L0" in axes.get_xlabel() and "delta LM loss" in axes.get_ylabel()
    curves = {line.get_label(): line for line in axes.get_lines()}
    assert set(curves) == {"topk", "jumprelu"}
    assert list(curves["topk"].get_xdata()) == [8.0, 32.0]
    assert list(curves["topk"].get_ydata()) == [0.4, 0.1]
    assert list(curves["jumprelu"].get_xdata()) == [10.0, 40.0]
    assert sorted(t.get_text() for t in axes.texts) == ["k=32", "k=8", "λ=0.001", "λ=0.01"]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["topk", "jumprelu"]


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def cache_dir(tiny_model, text_corpus_dir, tmp_path_factory) -> Path:
    """1024 cached activations of the tiny llama model (training from it is fast)."""
    out = tmp_path_factory.mktemp("cache") / "cache"
    made = _invoke(["cache", "--model", str(tiny_model("llama")), "--hook", HOOK, "--tokens", "1024",
                    "--corpus", str(text_corpus_dir), "--context-size", "24", "--out", str(out)])  # fmt: skip
    assert made.exit_code == 0, made.output
    return out


def _sweep_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sweep", "--cache", str(cache), "--hook", HOOK, "--arch", "jumprelu,topk",
        "--sparsity", "0.01,0.1", "--k", "4,16", "--width", "64", "--tokens", "1024",
        "--batch-size", "128", "--lr", "1e-3", "--eval-tokens", "200", "--eval-batch-size", "4",
        "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sweep_dir(cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "run"
    result = _invoke(_sweep_args(cache_dir, out))
    assert result.exit_code == 0, result.output
    words = ("jumprelu-lam0.1", "topk-k16", "Δ LM loss", "FVU", "sweep.csv", "had only")
    for word in words:
        assert word in result.stdout
    return out


def test_sweep_writes_every_file_and_each_csv_row_equals_its_eval_json(sweep_dir, text_corpus_dir):
    rows = read_csv(sweep_dir / "sweep.csv")
    assert [r["name"] for r in rows] == MEMBERS
    assert tuple(rows[0]) == CSV_COLUMNS
    groups = {"l0": "sparsity", "dead_fraction": "sparsity", "fvu": "reconstruction",
              "explained_variance": "reconstruction", "delta_lm_loss": "model_behavior",
              "ce_loss_recovered": "model_behavior", "kl": "model_behavior"}  # fmt: skip
    settings = {"jumprelu-lam0.01": ("0.01", ""), "jumprelu-lam0.1": ("0.1", ""),
                "topk-k4": ("", "4"), "topk-k16": ("", "16")}  # fmt: skip
    for row in rows:
        report = json.loads((sweep_dir / row["name"] / "eval.json").read_text())
        assert (row["hook"], row["arch"]) == (HOOK, row["name"].split("-")[0])
        assert (row["sparsity"], row["k"]) == settings[row["name"]]
        for column, group in groups.items():
            assert float(row[column]) == report["metrics"][group][column], (row["name"], column)
        assert int(row["n_tokens"]) == report["n_tokens"] > 0
        assert (
            report["eval_config"]["tokens"] == 200 and report["eval_config"]["context_size"] == 24
        )
        assert report["eval_config"]["corpus"] == str(text_corpus_dir.resolve())
        member = sweep_dir / row["name"]
        assert (member / "latent_stats.safetensors").is_file()
        assert (member / "feature_density.png").read_bytes()[:8] == PNG
    # every SAE saw the same tokens and the same clean model
    reports = [json.loads((sweep_dir / n / "eval.json").read_text()) for n in MEMBERS]
    assert len({r["metrics"]["model_behavior"]["ce_clean"] for r in reports}) == 1
    assert len({r["n_tokens"] for r in reports}) == 1
    markdown = (sweep_dir / "sweep.md").read_text().splitlines()
    assert "| name | arch | λ / k | L0 | FVU |" in markdown[2]
    assert [line.split(" | ")[0].removeprefix("| ") for line in markdown[4:]] == MEMBERS
    topk_line = next(line for line in markdown if line.startswith("| topk-k4 "))
    assert f"{float(rows[2]['l0']):.4g}" in topk_line and "k=4" in topk_line


def test_sweep_plots_are_valid_png_and_svg(sweep_dir):
    for stem in ("pareto_delta_lm_loss", "pareto_fvu"):
        assert (sweep_dir / "plots" / f"{stem}.png").read_bytes()[:8] == PNG
        root = ET.parse(sweep_dir / "plots" / f"{stem}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox")
        assert len(root.findall(".//{http://www.w3.org/2000/svg}path")) > 10


def test_resume_of_a_finished_sweep_redoes_nothing(sweep_dir, monkeypatch):
    import saelab.evals.sweep as sweep_module

    def fail(*_a, **_k):
        raise AssertionError("must not run")

    monkeypatch.setattr(sweep_module, "run_training", fail)
    monkeypatch.setattr(sweep_module, "_evaluate", fail)
    evals = [sweep_dir / name / "eval.json" for name in MEMBERS]
    before = [p.stat().st_mtime_ns for p in evals]
    csv_before = (sweep_dir / "sweep.csv").read_text()
    result = _invoke(["sweep", "--resume", str(sweep_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert [p.stat().st_mtime_ns for p in evals] == before
    assert (sweep_dir / "sweep.csv").read_text() == csv_before
    printed = json.loads(result.stdout)
    assert [r["name"] for r in printed["rows"]] == MEMBERS and printed["failed"] == {}
    assert "already evaluated" in result.stderr


def test_resume_with_other_eval_settings_reevaluates_only_then(sweep_dir, monkeypatch):
    import saelab.evals.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "run_training", lambda *a, **k: pytest.fail("retrained"))
    evals = [sweep_dir / name / "eval.json" for name in MEMBERS]
    before = [p.stat().st_mtime_ns for p in evals]
    result = _invoke(["sweep", "--resume", str(sweep_dir), "--eval-tokens", "100"])
    assert result.exit_code == 0, result.output
    assert all(p.stat().st_mtime_ns != t for p, t in zip(evals, before, strict=True))
    assert {json.loads(p.read_text())["eval_config"]["tokens"] for p in evals} == {100}
    # the new settings are remembered: a plain --resume reuses them
    again = _invoke(["sweep", "--resume", str(sweep_dir)])
    assert again.exit_code == 0 and "already evaluated" in again.output


def test_resume_evaluates_only_the_members_without_a_valid_eval_json(sweep_dir):
    evals = {name: sweep_dir / name / "eval.json" for name in MEMBERS}
    kept = {name: json.loads(p.read_text()) for name, p in evals.items()}
    before = {name: p.stat().st_mtime_ns for name, p in evals.items()}
    evals["topk-k4"].unlink()  # e.g. killed before it was written
    evals["jumprelu-lam0.1"].write_text("{not json")  # e.g. cut short
    result = _invoke(["sweep", "--resume", str(sweep_dir)])
    assert result.exit_code == 0, result.output
    assert "evaluating 2 of 4 SAE(s)" in result.output
    for name in ("jumprelu-lam0.01", "topk-k16"):
        assert evals[name].stat().st_mtime_ns == before[name]
    for name in ("topk-k4", "jumprelu-lam0.1"):
        redone = json.loads(evals[name].read_text())
        for group, values in kept[name]["metrics"].items():  # same tokens, same SAE
            assert redone["metrics"][group] == pytest.approx(values, rel=1e-6), (name, group)
    assert [r["name"] for r in read_csv(sweep_dir / "sweep.csv")] == MEMBERS


def test_load_sae_on_a_sweep_directory_names_its_members(sweep_dir):
    with pytest.raises(SAEFileError, match="sweep directory holding 4 SAEs") as error:
        saelab.load_sae(sweep_dir)
    for name in MEMBERS:
        assert str(sweep_dir / name) in str(error.value)
    assert saelab.load_sae(sweep_dir / "topk-k4").cfg.k == 4


def test_a_one_sae_sweep_uses_the_run_folder_and_the_eval_flags(cache_dir, tmp_path):
    out = tmp_path / "run"
    result = _invoke(["sweep", "--cache", str(cache_dir), "--hook", HOOK, "--arch", "topk",
                      "--k", "8", "--width", "64", "--tokens", "512", "--batch-size", "128",
                      "--eval-tokens", "100", "--eval-context-size", "16",
                      "--eval-corpus", "python-stdlib", "--out", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())  # one SAE: the run folder is its folder
    config = report["eval_config"]
    assert (config["corpus"], config["context_size"], config["tokens"]) == (
        "python-stdlib",
        16,
        100,
    )
    assert report["n_tokens"] >= 100
    assert config["model"] == saelab.load_sae(out).cfg.model_name
    printed = json.loads(result.stdout)
    assert [r["name"] for r in printed["rows"]] == ["topk-k8"]
    assert (out / "plots" / "pareto_fvu.svg").is_file() and (out / "sweep.md").is_file()


def test_eval_corpus_defaults_to_the_training_corpus(text_corpus_dir):
    from saelab.evals.sweep import EVAL_DEFAULTS, eval_settings
    from saelab.train.run_config import RunConfig

    cfg = RunConfig(model="m", hooks=[HOOK], corpus=str(text_corpus_dir), context_size=40)
    settings = eval_settings(cfg, EVAL_DEFAULTS)
    assert settings.corpus.spec == str(text_corpus_dir.resolve())
    assert (settings.context_size, settings.tokens, settings.batch_size) == (40, 8192, 8)


def test_bad_eval_options_fail_before_training(cache_dir, tmp_path):
    out = tmp_path / "run"
    result = _invoke(_sweep_args(cache_dir, out, "--eval-tokens", "0"))
    assert result.exit_code == 1 and "eval_tokens: must be ≥ 1, got 0" in result.output
    assert not (out / "config.yaml").exists()
    result = _invoke(_sweep_args(cache_dir, out, "--eval-corpus", "./nope.txt"))
    assert (
        result.exit_code == 1 and "nope.txt" in result.output and "Traceback" not in result.output
    )
