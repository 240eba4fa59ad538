"""`saelab eval` end to end on a tiny model: eval.json schema, files beside it, table, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import saelab
from saelab.cli import app
from saelab.formats import save_gemma_scope

HOOK = "blocks.1.hook_resid_post"
TOP_KEYS = {
    "eval_type_id", "schema_version", "eval_config", "saelab_version", "sae", "metrics",
    "n_tokens", "n_predictions", "feature_density", "files", "eval_time_s", "created_at",
}  # fmt: skip
METRICS = {
    "sparsity": {"l0", "l1", "dead_fraction", "dense_fraction"},
    "reconstruction": {
        "mse", "mse_per_element", "fvu", "explained_variance", "cosine", "shrinkage",
    },
    "model_behavior": {
        "ce_clean", "ce_sae", "ce_zero", "delta_lm_loss", "ce_loss_recovered", "kl",
    },
}  # fmt: skip
FAST = ["--tokens", "300", "--batch-size", "4", "--context-size", "32", "--device", "cpu"]


def _invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def sae_dir(tiny_model, tmp_path_factory) -> Path:
    """A jumprelu SAE on the tiny llama model, saved with its model/hook provenance."""
    sae = saelab.create_sae(
        "jumprelu", 64, 256, seed=0, model_name=str(tiny_model("llama")), hook_name=HOOK
    )
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    return sae.save(tmp_path_factory.mktemp("run") / "sae")


def test_eval_writes_eval_json_with_the_schema_and_prints_a_table(sae_dir):
    result = _invoke(str(sae_dir), *FAST)
    assert result.exit_code == 0, result.output
    for word in ("delta_lm_loss", "ce_loss_recovered", "explained_variance", "l0", "kl"):
        assert word in result.stdout
    report = json.loads((sae_dir / "eval.json").read_text())
    assert set(report) == TOP_KEYS
    assert {group: set(values) for group, values in report["metrics"].items()} == METRICS
    assert report["eval_type_id"] == "saelab_core" and report["saelab_version"] == "0.1.0"
    config = report["eval_config"]
    assert config["model"] == saelab.load_sae(sae_dir).cfg.model_name and config["hook"] == HOOK
    assert (config["corpus"], config["split"], config["tokens"]) == (
        "python-stdlib",
        "heldout",
        300,
    )
    assert (config["context_size"], config["batch_size"], config["seed"]) == (32, 4, 0)
    assert report["sae"] == {
        "path": str(sae_dir.resolve()),
        "architecture": "jumprelu",
        "d_in": 64,
        "d_sae": 256,
    }
    assert report["n_tokens"] >= 300
    behavior = report["metrics"]["model_behavior"]
    assert behavior["delta_lm_loss"] == pytest.approx(behavior["ce_sae"] - behavior["ce_clean"])
    assert behavior["kl"] >= 0
    stats = load_file(str(sae_dir / report["files"]["latent_stats"]))
    assert stats["firing_frequency"].shape == stats["mean_activation"].shape == (256,)
    density = report["feature_density"]
    dead = int((stats["firing_frequency"] == 0).sum())
    assert density["dead"] == dead and sum(density["counts"]) == 256 - dead
    assert len(density["log10_bin_edges"]) == len(density["counts"]) + 1
    assert report["metrics"]["sparsity"]["dead_fraction"] == pytest.approx(dead / 256)
    png = sae_dir / report["files"]["feature_density_plot"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_output_and_out_option(sae_dir, tmp_path):
    out = tmp_path / "results" / "my-eval.json"
    result = _invoke(str(sae_dir), *FAST, "--out", str(out), "--json", "--seed", "1")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["eval_config"]["seed"] == 1
    assert (tmp_path / "results" / "latent_stats.safetensors").is_file()
    assert (tmp_path / "results" / "feature_density.png").is_file()


def test_probing_adds_accuracies_per_task_and_k(sae_dir, tmp_path):
    out = tmp_path / "probe.json"
    args = [str(sae_dir), *FAST, "--out", str(out), "--probing", "--probing-tokens", "600"]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    probing = json.loads(out.read_text())["probing"]
    assert probing["tokens"] == 600 and "mean" in probing["tasks"]
    for name, row in probing["tasks"].items():
        assert {"dense", "k1", "k2", "k5"} <= set(row), name
        assert all(0.0 <= row[key] <= 1.0 for key in ("dense", "k1", "k2", "k5")), name


def test_probing_a_corpus_without_python_source_is_a_clear_error(sae_dir, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):  # text Python's tokenizer rejects from its first character
        (corpus / f"{i}.txt").write_text(f'"""never closed {i}\n' + "words and more words\n" * 30)
    args = [str(sae_dir), *FAST, "--corpus", str(corpus), "--probing"]
    result = _invoke(*args, "--out", str(tmp_path / "e.json"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "sparse probing needs Python source" in result.output


def test_absorption_adds_the_first_letter_metric_and_its_table_rows(sae_dir, tmp_path):
    out = tmp_path / "absorption.json"
    result = _invoke(str(sae_dir), *FAST, "--out", str(out), "--absorption",
                     "--absorption-words", "120")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "absorption (mean over letters)" in result.stdout
    absorption = json.loads(out.read_text())["absorption"]
    assert (absorption["words"], absorption["train"], absorption["test"]) == (120, 96, 24)
    assert set(absorption["mean"]) >= {"letters", "probe_f1"}
    for letter, row in absorption["letters"].items():
        assert len(letter) == 1 and 0 <= row["mean_absorption_fraction"] <= 1, letter
        assert 0 <= row["full_absorption_rate"] <= 1 and 0 <= row["probe_f1"] <= 1, letter


def test_absorption_reuses_the_words_activations_of_the_first_evaluation(
    sae_dir, tmp_path, monkeypatch
):
    args = [str(sae_dir), *FAST, "--absorption", "--absorption-words", "120"]
    assert _invoke(*args, "--out", str(tmp_path / "a.json")).exit_code == 0

    def no_lm_pass(*args, **kwargs):
        raise AssertionError("the letter set was built again")

    monkeypatch.setattr("saelab.evals.command.build_letter_set", no_lm_pass)
    result = _invoke(*args, "--out", str(tmp_path / "b.json"))
    assert result.exit_code == 0, result.output
    first, second = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert first["absorption"] == second["absorption"]


def test_absorption_of_a_transcoder_is_a_clear_error(tiny_model, tmp_path):
    sae = saelab.create_sae("topk", 64, 128, k=4, d_out=64, model_name=str(tiny_model("llama")),
                            hook_name="blocks.1.hook_mlp_in",
                            target_hook_name="blocks.1.hook_mlp_out")  # fmt: skip
    path = sae.save(tmp_path / "transcoder")
    result = _invoke(str(path), *FAST, "--absorption")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"--absorption needs an SAE that reconstructs its input; {path} is a transcoder" in (
        result.output.replace("\n", "")
    )


def test_gemma_scope_npz_needs_model_and_hook_and_writes_beside_it(tiny_model, tmp_path):
    sae = saelab.create_sae("jumprelu", 64, 128, seed=2)
    sae.fold_normalization(1.0)  # Gemma Scope files have no pre-encoder bias
    npz = save_gemma_scope(sae, tmp_path / "params.npz")
    result = _invoke(str(npz), *FAST)
    assert result.exit_code == 1
    assert "pass --model (the SAE config records no model_name)" in result.output
    assert "--hook (the SAE config records no hook_name)" in result.output
    assert "Traceback" not in result.output
    result = _invoke(str(npz), *FAST, "--model", str(tiny_model("llama")), "--hook", HOOK)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["sae"]["architecture"] == "jumprelu" and report["sae"]["d_sae"] == 128


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "no such file or directory"),
        (["{empty}"], "not an SAE"),
        (["{sae}", "--hook", "blocks.9.hook_resid_post"], "blocks.9.hook_resid_post"),
        (["{sae}", "--model", "{missing}"], "Cannot load model"),
        (["{sae}", "--hook", "blocks.1.hook_mlp_out", "--tokens", "0"], "tokens"),
    ],
)
def test_errors_are_clear_and_without_traceback(sae_dir, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nothing-here", "empty": tmp_path / "empty", "sae": sae_dir}
    result = _invoke(*(arg.format(**paths) for arg in args), "--device", "cpu")
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    if "{missing}" in args[0] or "{empty}" in args[0]:
        assert str(paths[args[0].strip("{}")]) in result.output


def test_mismatched_sae_width_is_reported(tiny_model, tmp_path):
    sae = saelab.create_sae(
        "topk", 32, 64, k=4, model_name=str(tiny_model("llama")), hook_name=HOOK
    )
    path = sae.save(tmp_path / "narrow")
    result = _invoke(str(path), *FAST)
    assert result.exit_code == 1 and "d_in=32" in result.output


def test_help_lists_every_option():
    result = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--model", "--hook", "--corpus", "--tokens", "--batch-size", "--context-size",
                   "--device", "--dtype", "--seed", "--out", "--json", "--probing",
                   "--probing-tokens", "--absorption", "--absorption-words"):  # fmt: skip
        assert option in result.output


def test_eval_of_a_transcoder_splices_its_target_hook(tiny_model, tmp_path):
    """SPEC §2.6: ŷ from blocks.1.hook_mlp_in replaces blocks.1.hook_mlp_out."""
    tc = saelab.create_sae(
        "topk", 64, 128, k=8, seed=0, d_out=64, model_name=str(tiny_model("llama")),
        hook_name="blocks.1.hook_mlp_in", target_hook_name="blocks.1.hook_mlp_out",
    )  # fmt: skip
    path = tc.save(tmp_path / "tc")
    result = _invoke(str(path), *FAST)
    assert result.exit_code == 0, result.output
    config = json.loads((path / "eval.json").read_text())["eval_config"]
    assert (config["hook"], config["input_hook"]) == (
        "blocks.1.hook_mlp_out",
        "blocks.1.hook_mlp_in",
    )
    no_target = saelab.create_sae(
        "topk",
        64,
        128,
        k=8,
        d_out=64,
        model_name=str(tiny_model("llama")),
        hook_name="blocks.1.hook_mlp_in",
    )
    failed = _invoke(str(no_target.save(tmp_path / "bad")), *FAST)
    assert failed.exit_code == 1 and "records no target_hook_name" in failed.output
    assert "Traceback" not in failed.output
