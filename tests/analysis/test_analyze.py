"""`saelab analyze` on a tiny model: features.sqlite against brute force, logit lens, exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import saelab
from saelab.analysis import FeatureDB, decoder_neighbours, logit_lens, model_logit_lens
from saelab.analysis.command import run_analyze_command
from saelab.analysis.logit_lens import final_norm_module, fold_final_norm
from saelab.cli import app
from saelab.data import load_corpus, sae_token_mask, special_token_ids
from saelab.evals.tokens import heldout_batches
from saelab.lm import load_model

HOOK = "blocks.1.hook_resid_post"
TOKENS, CONTEXT, BATCH = 1200, 32, 4


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory) -> Path:
    """A run directory holding a jumprelu SAE on the tiny llama model (with provenance)."""
    sae = saelab.create_sae(
        "jumprelu", 64, 128, seed=0, model_name=str(tiny_model("llama")), hook_name=HOOK
    )
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    run = tmp_path_factory.mktemp("run")
    sae.save(run / "sae")
    return run


@pytest.fixture(scope="module")
def analysed(run_dir) -> dict:
    return run_analyze_command(
        path=run_dir, tokens=TOKENS, context_size=CONTEXT, batch_size=BATCH, device="cpu",
        histograms=2,
    )  # fmt: skip


def _brute_force(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, object]:
    """All held-out contexts, their SAE activations (special positions zeroed) and the mask."""
    sae = saelab.load_sae(run_dir)
    lm = load_model(sae.cfg.model_name, device="cpu")
    batches = list(
        heldout_batches(load_corpus("python-stdlib"), lm.tokenizer, TOKENS,
                        context_size=CONTEXT, batch_size=BATCH)
    )  # fmt: skip
    ids = torch.cat(batches)
    with torch.no_grad():
        f = sae.encode(lm.activations(ids, HOOK)[HOOK])
    mask = sae_token_mask(ids, special_token_ids(lm.tokenizer))
    return ids, f * mask[..., None], mask, lm


def test_statistics_and_top_examples_equal_brute_force(run_dir, analysed):
    ids, f, mask, lm = _brute_force(run_dir)
    window = 12
    with FeatureDB(analysed["database"]) as db:
        meta = db.meta()
        assert meta["tokens"] == int(mask.sum()) == analysed["tokens"]
        assert (meta["d_sae"], meta["hook"], meta["window"]) == (128, HOOK, window)
        flat = f.reshape(-1, 128)
        checked = 0
        for latent in range(128):
            row = db.latent(latent)
            column = flat[:, latent]
            fired = int((column > 0).sum())
            assert row["n_fired"] == fired
            assert row["frequency"] == pytest.approx(fired / int(mask.sum()))
            assert row["max_activation"] == pytest.approx(float(column.max()), rel=1e-5)
            top = [e for e in row["examples"] if e["kind"] == "top"]
            expected = column.sort(descending=True).values[: min(20, fired)]
            assert [e["max_activation"] for e in top] == pytest.approx(expected.tolist(), rel=1e-5)
            for example in top:  # its window is the context around a position with that value
                matches = (column - example["max_activation"]).abs() <= 1e-5 * example[
                    "max_activation"
                ]
                windows = []
                for index in matches.nonzero().squeeze(1).tolist():
                    ctx, pos = divmod(index, ids.shape[1])
                    lo, hi = max(0, pos - window), min(ids.shape[1], pos + window + 1)
                    windows.append((
                        [lm.tokenizer.decode([t]) for t in ids[ctx, lo:hi]], pos - lo,
                        f[ctx, lo:hi, latent].tolist(),
                    ))  # fmt: skip
                found = [
                    w for w in windows if (w[0], w[1]) == (example["tokens"], example["max_index"])
                ]
                assert found, (latent, example)
                assert example["activations"] == pytest.approx(found[0][2], rel=1e-3, abs=1e-6)
                checked += 1
        assert checked > 500
        quantile = [
            e
            for e in db.latent(int(flat.gt(0).sum(0).argmax()))["examples"]
            if e["kind"] == "quantile"
        ]
        assert {e["quantile"] for e in quantile} == {0, 1, 2, 3}
        bands = {q: [e["max_activation"] for e in quantile if e["quantile"] == q] for q in range(4)}
        assert max(bands[0]) <= min(bands[3])  # higher bands hold higher activations


def test_histograms_count_every_firing(run_dir, analysed):
    _, f, _, _ = _brute_force(run_dir)
    with FeatureDB(analysed["database"]) as db:
        for row in db.latents():
            column = f.reshape(-1, 128)[:, row["latent"]]
            hist = row["histogram"]
            assert sum(hist["counts"]) == row["n_fired"]
            if row["n_fired"]:
                assert hist["edges"][-1] >= row["max_activation"] * (1 - 1e-4)
                expected = torch.histogram(column[column > 0], torch.tensor(hist["edges"])).hist
                assert hist["counts"] == pytest.approx(expected.tolist(), abs=1)


def test_logit_lens_equals_w_dec_times_w_u():
    g = torch.Generator().manual_seed(0)
    W_dec, W_U = torch.randn(50, 16, generator=g), torch.randn(16, 300, generator=g)
    pos_v, pos_i, neg_v, neg_i = logit_lens(W_dec, W_U, k=7)
    direct = W_dec @ W_U
    assert torch.equal(pos_i, direct.topk(7, dim=1).indices)
    assert torch.allclose(pos_v, direct.topk(7, dim=1).values, atol=1e-5)
    assert torch.equal(neg_i, (-direct).topk(7, dim=1).indices)
    assert torch.allclose(neg_v, -(-direct).topk(7, dim=1).values, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_logit_lens_folds_the_final_norm(tiny_model, family):
    lm = load_model(tiny_model(family), device="cpu")
    norm = final_norm_module(lm.model)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, generator=torch.Generator().manual_seed(1)) + 0.5)
    W_dec = torch.randn(40, 64, generator=torch.Generator().manual_seed(2))
    W_U = lm.model.get_output_embeddings().weight.T.detach()
    folded = fold_final_norm(norm, 64)
    # Expected γ per family: LayerNorm weight (centring), RMSNorm weight, Gemma's 1 + weight.
    gamma = norm.weight.detach() + (1.0 if family == "gemma3" else 0.0)
    assert folded.centres == (family == "gpt2")
    assert torch.allclose(folded.scale, gamma, atol=1e-4)
    rows = W_dec - W_dec.mean(1, keepdim=True) if family == "gpt2" else W_dec
    direct = (rows * gamma) @ W_U
    pos_v, pos_i, _, neg_i = model_logit_lens(lm.model, W_dec, 5)
    assert torch.equal(pos_i, direct.topk(5, dim=1).indices)
    assert torch.equal(neg_i, direct.topk(5, dim=1, largest=False).indices)
    assert torch.allclose(pos_v, direct.topk(5, dim=1).values, rtol=1e-3, atol=1e-4)


def test_database_holds_logit_lens_and_neighbours(run_dir, analysed):
    sae = saelab.load_sae(run_dir)
    lm = load_model(sae.cfg.model_name, device="cpu")
    W_dec = sae.W_dec.detach()
    W_U = lm.model.get_output_embeddings().weight.T.detach()
    gamma = final_norm_module(lm.model).weight.detach()
    direct = (W_dec * gamma) @ W_U
    unit = W_dec / W_dec.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    cos.fill_diagonal_(-2)
    with FeatureDB(analysed["database"]) as db:
        for latent in (0, 17, 127):
            row = db.latent(latent)
            top = direct[latent].topk(10)
            assert [t for t, _ in row["logit_pos"]] == [
                lm.tokenizer.decode([i]) for i in top.indices
            ]
            assert [v for _, v in row["logit_pos"]] == pytest.approx(top.values.tolist(), rel=1e-3)
            near = cos[latent].topk(10)
            assert [j for j, _ in row["neighbours"]] == near.indices.tolist()
            assert [c for _, c in row["neighbours"]] == pytest.approx(
                near.values.tolist(), abs=1e-3
            )
    _, indices = decoder_neighbours(W_dec, 3)
    assert torch.equal(indices, cos.topk(3, dim=1).indices)


def test_search_explanations_and_scores(analysed):
    with FeatureDB(analysed["database"]) as db:
        row = next(r for r in db.latents(order_by="frequency") if r["top_tokens"].strip())
        word = next(w for w in row["top_tokens"].split() if any(c.isalnum() for c in w))
        assert row["latent"] in db.search(word)
        db.set_explanation(3, "Python keyword arguments in function calls")
        db.set_scores(3, detection=0.75)
        assert db.search("keyword argu") == [3]
        assert db.search("3")[0] == 3
        assert (
            db.latent(3)["explanation"].startswith("Python")
            and db.latent(3)["score_detection"] == 0.75
        )
        assert db.latent(3)["score_fuzzing"] is None
        assert db.latent(128) is None
        freqs = [r["frequency"] for r in db.latents(order_by="frequency", limit=10)]
        assert freqs == sorted(freqs, reverse=True) and len(freqs) == 10


def _jsonl_gz(path: Path) -> list[dict]:
    import gzip

    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_figures_and_neuronpedia_export(analysed, tmp_path):
    from saelab.analysis.neuronpedia import NEURONPEDIA_FIELDS

    figures = [Path(p) for p in analysed["figures"]]
    assert figures[0].name == "features_overview.png" and len(figures) == 3
    assert all(p.stat().st_size > 10_000 for p in figures)
    with FeatureDB(analysed["database"]) as db:
        db.set_explanation(5, "explained five")
        row = db.latent(5)
        model_id = Path(db.meta()["model"]).name
    result = CliRunner().invoke(
        app,
        ["neuronpedia", str(Path(analysed["database"]).parent), "--out", str(tmp_path),
         "--hf-repo", "alice/saes", "--hf-folder", "l1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    folder = tmp_path / model_id / "1-saelab-res"
    assert summary["folder"] == str(folder)
    records = {
        "feature": _jsonl_gz(folder / "features" / "batch-0.jsonl.gz"),
        "activation": _jsonl_gz(folder / "activations" / "batch-0.jsonl.gz"),
        "explanation": _jsonl_gz(folder / "explanations" / "batch-0.jsonl.gz"),
        **{name: [json.loads((folder / f"{name}.jsonl").read_text())]
           for name in ("source", "sourceset", "release", "model")},
    }  # fmt: skip
    # Every record has the fields Neuronpedia's exporter writes: all required ones, no others.
    for kind, rows in records.items():
        required, optional = NEURONPEDIA_FIELDS[kind]
        for record in rows:
            assert set(required) <= set(record) <= set(required) | set(optional), kind
    features, activations = records["feature"], records["activation"]
    assert len(features) == summary["latents"] == 128 and len(activations) == summary["examples"]
    explained = {e["index"]: e["description"] for e in records["explanation"]}
    assert explained["5"] == "explained five" and len(explained) == summary["explanations"]
    assert records["source"][0]["id"] == "1-saelab-res"
    assert (records["source"][0]["hfRepoId"], records["source"][0]["hfFolderId"]) == (
        "alice/saes",
        "l1",
    )
    feature = features[5]
    assert (feature["layer"], feature["index"]) == ("1-saelab-res", "5")
    assert feature["pos_str"] == [t for t, _ in row["logit_pos"]]
    assert feature["frac_nonzero"] == row["frequency"]
    assert sum(feature["freq_hist_data_bar_heights"]) == row["n_fired"]
    first = next(a for a in activations if a["index"] == "5")
    assert first["values"][first["maxValueTokenIndex"]] == pytest.approx(first["maxValue"])
    assert len({a["id"] for a in activations}) == len(activations)


def test_cli_json_and_errors(run_dir, tmp_path):
    out = tmp_path / "f.sqlite"
    result = CliRunner().invoke(
        app,
        ["analyze", str(run_dir), "--tokens", "200", "--context-size", "32", "--device", "cpu",
         "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["database"] == str(out) and summary["tokens"] >= 200 and summary["d_sae"] == 128
    missing = CliRunner().invoke(app, ["analyze", str(tmp_path / "nope"), "--tokens", "10"])
    assert missing.exit_code == 1 and "no such file or directory" in missing.output
    no_db = CliRunner().invoke(app, ["dashboard", str(tmp_path), "--out", str(tmp_path / "site")])
    assert no_db.exit_code == 1 and "saelab analyze" in no_db.output
