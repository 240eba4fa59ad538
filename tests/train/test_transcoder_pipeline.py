"""`saelab train --target-hook`: transcoders (SPEC §2.6) from a two-hook cache or a live LM."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import saelab
from saelab.cli import app
from saelab.data import ContextStream, load_corpus, sae_token_mask, special_token_ids

IN, OUT = "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"
runner = CliRunner()


@pytest.fixture(scope="module")
def two_hook_cache(tiny_model, text_corpus_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c"
    args = [
        "cache", "--model", str(tiny_model("llama")), "--hook", IN, "--hook", OUT,
        "--corpus", str(text_corpus_dir), "--tokens", "8000", "--context-size", "32",
        "--out", str(out),
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def _train(source: list[str], out: Path, *extra: str) -> Path:
    args = [
        "train", *source, "--hook", IN, "--target-hook", OUT, "--arch", "topk", "--k", "8",
        "--width", "128", "--tokens", "8192", "--batch-size", "128", "--context-size", "32",
        "--out", str(out), *extra,
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out / "sae"


def _held_out(tiny_lm, corpus_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(x at IN, y at OUT) on held-out contexts, special tokens left out."""
    stream = ContextStream(load_corpus(corpus_dir), tiny_lm.tokenizer, 32, split="all", seed=7)
    batch = stream.next_batch(16)
    acts = tiny_lm.activations(batch, [IN, OUT])
    mask = sae_token_mask(batch, special_token_ids(tiny_lm.tokenizer))
    return acts[IN][mask], acts[OUT][mask]


@pytest.fixture(scope="module")
def trained_run(two_hook_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "r"
    _train(["--cache", str(two_hook_cache)], out)
    return out


def test_transcoder_from_a_two_hook_cache_predicts_the_mlp_output(
    trained_run, tiny_lm, text_corpus_dir
):
    sae = saelab.load_sae(trained_run / "sae")
    cfg = sae.cfg
    assert (cfg.hook_name, cfg.target_hook_name, cfg.d_out) == (IN, OUT, tiny_lm.d_model)
    assert cfg.normalization_constant != cfg.target_normalization_constant  # C_x, C_y (SPEC §1)
    x, y = _held_out(tiny_lm, text_corpus_dir)
    with torch.no_grad():
        fvu = float((y - sae(x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
        as_identity = float((y - x).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    # The mean predictor has FVU 1; a transcoder that learned x instead of y, or whose C_x/C_y
    # were folded wrongly, does not come near 0.75. 8 of 128 latents after 8k tokens: ≈ 0.6.
    assert fvu < 0.75 < as_identity


def test_transcoder_flags_are_checked_before_any_work(tiny_model, tmp_path):
    base = ["train", "--model", str(tiny_model("llama")), "--out", str(tmp_path / "r")]
    same = runner.invoke(app, [*base, "--hook", IN, "--target-hook", IN])
    assert same.exit_code == 1 and "target_hook" in same.output and "also an input" in same.output
    skip = runner.invoke(app, [*base, "--hook", IN, "--skip-connection"])
    assert skip.exit_code == 1 and "skip_connection: needs a transcoder" in skip.output
    assert not (tmp_path / "r").exists()


def test_analyze_and_dashboard_read_a_transcoder_at_its_input_hook(trained_run, tmp_path):
    from saelab.analysis.database import FeatureDB

    result = runner.invoke(
        app, ["analyze", str(trained_run), "--tokens", "300", "--device", "cpu", "--json"]
    )
    assert result.exit_code == 0, result.output
    with FeatureDB(trained_run / "features.sqlite") as db:
        meta = db.meta()
        assert (meta["hook"], meta["target_hook"]) == (IN, OUT)
        assert sum(r["n_fired"] for r in db.latents(order_by="frequency", limit=128)) > 0
    site = runner.invoke(app, ["dashboard", str(trained_run), "--out", str(tmp_path / "site")])
    assert site.exit_code == 0, site.output
    assert (tmp_path / "site" / "index.html").is_file()


def test_sweep_trains_transcoders_and_evaluates_each_as_saelab_eval_does(
    two_hook_cache, text_corpus_dir, tmp_path
):
    """`saelab sweep --target-hook`: every member is a transcoder IN → OUT, spliced in at OUT,
    and its sweep evaluation equals a separate `saelab eval` of the same files on the same
    held-out tokens."""
    import json

    from saelab.evals.sweep_table import read_csv

    out = tmp_path / "sweep"
    args = [
        "sweep", "--cache", str(two_hook_cache), "--hook", IN, "--target-hook", OUT,
        "--arch", "topk,jumprelu", "--k", "8", "--width", "128", "--tokens", "4096",
        "--batch-size", "128", "--eval-tokens", "200", "--eval-batch-size", "4",
        "--out", str(out),
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "sweep.csv")
    assert [r["name"] for r in rows] == ["topk-k8", "jumprelu-default"]
    for row in rows:
        member = out / row["name"]
        cfg = saelab.load_sae(member).cfg
        assert (cfg.hook_name, cfg.target_hook_name, cfg.d_out) == (IN, OUT, 64)
        swept = json.loads((member / "eval.json").read_text())
        assert (swept["eval_config"]["hook"], swept["eval_config"]["input_hook"]) == (OUT, IN)
        alone = tmp_path / f"{row['name']}.json"
        single = runner.invoke(app, [
            "eval", str(member), "--corpus", str(text_corpus_dir), "--tokens", "200",
            "--batch-size", "4", "--context-size", "32", "--device", "cpu", "--out", str(alone),
        ])  # fmt: skip
        assert single.exit_code == 0, single.output
        report = json.loads(alone.read_text())
        assert report["n_tokens"] == swept["n_tokens"]
        for group, values in swept["metrics"].items():
            for name, value in values.items():
                assert report["metrics"][group][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (
                    row["name"],
                    name,
                )
