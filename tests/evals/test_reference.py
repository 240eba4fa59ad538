"""Cached reference passes (saelab.evals.reference): the same metrics as running all three passes,
with only the spliced pass run per SAE, reused across evaluations and never across other tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import saelab
from saelab.cli import app
from saelab.evals import reference as references
from saelab.evals.spliced import MultiSplicedEvaluator
from saelab.lm import load_model

HOOK = "blocks.1.hook_resid_post"
BOS, PAD = 1, 0
FAST = ["--tokens", "300", "--batch-size", "4", "--context-size", "32", "--device", "cpu"]
SHARED = ("ce_clean", "ce_zero")


def _batches() -> list[torch.Tensor]:
    """Three batches of packed contexts, the last with pad at the end of a row."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for rows in (3, 2, 4):
        ids = torch.randint(3, 512, (rows, 16), generator=g)
        ids[:, 0] = BOS
        batches.append(ids)
    batches[-1][1, -3:] = PAD
    return batches


def _saes() -> list[saelab.SAE]:
    return [saelab.create_sae("topk", 64, 256, k=k, seed=k) for k in (4, 16)]


def _run(lm, saes, batches, reference=None, record=False, hook=HOOK):
    evaluator = MultiSplicedEvaluator(saes, lm, hook, record_reference=record)
    for i, ids in enumerate(batches):
        evaluator.update(ids, None if reference is None else reference[i])
    return evaluator


@pytest.mark.parametrize(
    "hook", ["blocks.0.hook_resid_pre", HOOK, "blocks.2.hook_resid_mid", "blocks.1.hook_mlp_out"]
)
def test_the_reference_gives_the_metrics_of_all_three_passes(tiny_lm, hook):
    """CE clean/zero are the recorded sums; CE with the SAE is the same computation; KL swaps
    Σ_v p·(log p − log p_sae) for (Σ_v p log p) − (Wᵀp)·h + logsumexp(W h): each fp32 log-prob
    moves by ≲ n·eps32 (n = d_model + vocab terms, logits of size ~1 here), as in the chunking test.
    Each hook kind stops the prefix-only forward at a different place (layer input, output, mid).
    """
    batches = _batches()
    full = _run(tiny_lm, _saes(), batches, record=True, hook=hook)
    reference = full.reference_batches
    assert [r.input_ids.shape for r in reference] == [ids.shape for ids in batches]
    assert sum(len(r.clean_dual) for r in reference) == full.n_predictions
    assert reference[0].clean_dual.shape[1] == tiny_lm.d_model
    cached = _run(tiny_lm, _saes(), batches, reference=reference, hook=hook)
    n_terms = tiny_lm.d_model + tiny_lm.model.config.vocab_size
    eps = torch.finfo(torch.float32).eps
    for want, got in zip(full.results(), cached.results(), strict=True):
        for key in (*SHARED, "ce_sae", "fvu", "l0"):
            assert got[key] == pytest.approx(want[key], rel=1e-12), key
        bound = 4 * n_terms * eps
        assert got["kl"] == pytest.approx(want["kl"], rel=0, abs=bound)
        if "resid" in hook:  # a random SAE on the residual stream moves KL far above the bound
            assert want["kl"] > 10 * bound
        assert got["n_predictions"] == want["n_predictions"]


def test_with_the_reference_only_the_spliced_pass_runs_after_the_hook(tiny_lm):
    calls = []
    last = tiny_lm.model.model.layers[-1]
    handle = last.register_forward_hook(lambda *_: calls.append(1))
    try:
        batches = _batches()
        full = _run(tiny_lm, _saes(), batches, record=True)
        without = len(calls)
        calls.clear()
        _run(tiny_lm, _saes(), batches, reference=full.reference_batches)
    finally:
        handle.remove()
    assert without == 3 * (2 + 2)  # per batch: clean, zero-ablated, and one per SAE
    assert len(calls) == 3 * 2  # per batch: one per SAE


def test_a_reference_of_other_tokens_is_refused(tiny_lm):
    batches = _batches()
    reference = _run(tiny_lm, _saes(), batches, record=True).reference_batches
    with pytest.raises(ValueError, match="other tokens"):
        _run(tiny_lm, _saes(), batches[1:], reference=reference)


def test_a_soft_capping_head_has_no_reference(tiny_model):
    gemma2 = load_model(tiny_model("gemma2"), device="cpu")
    assert not references.supports_reference(gemma2.model)
    assert references.supports_reference(load_model(tiny_model("llama"), device="cpu").model)
    evaluator = _run(gemma2, _saes(), _batches()[:1], record=True)
    assert evaluator.reference_batches is None


def _eval(sae_dir: Path, *extra: str) -> dict:
    result = CliRunner().invoke(app, ["eval", str(sae_dir), *FAST, "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture
def sae_dir(tiny_model, tmp_path) -> Path:
    sae = saelab.create_sae(
        "topk", 64, 256, k=8, seed=0, model_name=str(tiny_model("llama")), hook_name=HOOK
    )
    return sae.save(tmp_path / "sae")


def test_saelab_eval_saves_the_reference_once_and_reuses_it(sae_dir, monkeypatch):
    first = _eval(sae_dir)
    (saved,) = references.reference_dir().glob("*.safetensors")
    content, inode = saved.read_bytes(), saved.stat().st_ino
    runs = []
    real = MultiSplicedEvaluator._score_batch
    monkeypatch.setattr(
        MultiSplicedEvaluator, "_score_batch", lambda *a, **k: runs.append(1) or real(*a, **k)
    )
    second = _eval(sae_dir)
    assert runs == []  # no clean/zero pass
    assert saved.stat().st_ino == inode and saved.read_bytes() == content  # not rewritten
    for group in ("sparsity", "reconstruction", "model_behavior"):
        for key, value in first["metrics"][group].items():
            assert second["metrics"][group][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    _eval(sae_dir, "--tokens", "200")  # other settings: another reference
    assert len(list(references.reference_dir().glob("*.safetensors"))) == 2


def test_a_corrupt_reference_is_recomputed_and_no_reuse_writes_none(sae_dir):
    first = _eval(sae_dir)
    (saved,) = references.reference_dir().glob("*.safetensors")
    saved.write_bytes(saved.read_bytes()[:100])
    again = _eval(sae_dir)
    assert again["metrics"]["model_behavior"] == first["metrics"]["model_behavior"]
    assert saved.stat().st_size > 100
    saved.unlink()
    _eval(sae_dir, "--no-reuse-reference")
    assert list(references.reference_dir().glob("*.safetensors")) == []


def test_references_beyond_the_size_budget_are_pruned_least_recently_used_first(tmp_path):
    import os

    for i, name in enumerate(("old", "mid", "new")):
        f = tmp_path / f"{name}.safetensors"
        f.write_bytes(b"x" * 100)
        os.utime(f, (1000 + i, 1000 + i))
    (tmp_path / "notes.txt").write_text("not a reference")
    os.utime(tmp_path / "old.safetensors", (2000, 2000))  # reused last: most recently used
    deleted = references.prune_references(tmp_path, keep_bytes=250)
    assert [f.name for f in deleted] == ["mid.safetensors"]
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "new.safetensors",
        "notes.txt",
        "old.safetensors",
    ]
    # The most recently used file stays even when it alone is over the budget.
    assert references.prune_references(tmp_path, keep_bytes=10) == [tmp_path / "new.safetensors"]
    assert (tmp_path / "old.safetensors").exists()
