"""Spliced-LM metrics (SPEC §3) equal direct torch computations from HF logits on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

import saelab
from saelab.evals import SplicedEvaluator, evaluate_spliced
from saelab.lm import load_model

HOOK = "blocks.1.hook_resid_post"
PAD, BOS, EOS = 0, 1, 2  # the tiny tokenizer's special ids (conftest.build_tokenizer)


class FnSAE(saelab.SAE):
    """A "SAE" with f = x and x̂ = fn(f): identity, zero or targeted errors, to test the metrics."""

    architecture = "fn-test"

    def __init__(self, d: int, fn=lambda f: f) -> None:
        super().__init__(saelab.SAEConfig("jumprelu", d, d))
        self.fn = fn
        self.seen: list[torch.Tensor] = []

    def encode(self, x):
        self.seen.append(x)
        return x.float()

    def decode(self, f):
        return self.fn(f)

    def train_forward(self, x, sparsity_coefficient, dead_mask=None):
        raise AssertionError("not used")


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    """Three packed contexts: an EOS separator inside row 0, pad at the end of row 1."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 512, (3, 16), generator=g)
    ids[:, 0] = BOS
    ids[0, 6] = EOS
    ids[1, -2:] = PAD
    return ids


def _sae_mask(ids: torch.Tensor) -> torch.Tensor:
    return ~torch.isin(ids, torch.tensor([PAD, BOS, EOS]))


def _direct(lm, ids, x_hat_of=None, splice_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs (B, S, V) in float32, predicted-position mask (B, S-1)) straight from HF.

    With x_hat_of, the resid_post of layer 1 is replaced by x_hat_of(x) where splice_mask holds,
    through a plain torch forward hook (independent of saelab's hook API).
    """
    mask = _sae_mask(ids) if splice_mask is None else splice_mask
    handle = None
    if x_hat_of is not None:

        def hook(_module, _args, output):
            return torch.where(mask[..., None], x_hat_of(output), output)

        handle = lm.model.model.layers[1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = lm.model(ids).logits
    finally:
        if handle is not None:
            handle.remove()
    predicted = _sae_mask(ids)[:, :-1] & (ids[:, 1:] != PAD)
    return torch.log_softmax(logits.float(), -1), predicted


def _ce(log_probs, ids, predicted) -> float:
    nll = -log_probs[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    return float(nll[predicted].double().mean())


def _evaluate(sae, lm, ids, hook=HOOK):
    return evaluate_spliced(sae, lm, hook, [ids])


def test_ce_and_kl_equal_a_direct_torch_computation(tiny_lm, ids):
    sae = saelab.create_sae("topk", 64, 256, k=8, seed=0)
    got = _evaluate(sae, tiny_lm, ids)
    clean, predicted = _direct(tiny_lm, ids)
    with torch.no_grad():
        spliced, _ = _direct(tiny_lm, ids, lambda x: sae(x))
    zeroed, _ = _direct(tiny_lm, ids, torch.zeros_like)
    assert got["n_predictions"] == int(predicted.sum()) == 3 * 15 - 3 - 1 - 2
    assert got["ce_clean"] == pytest.approx(_ce(clean, ids, predicted), rel=1e-6)
    assert got["ce_sae"] == pytest.approx(_ce(spliced, ids, predicted), rel=1e-6)
    assert got["ce_zero"] == pytest.approx(_ce(zeroed, ids, predicted), rel=1e-6)
    kl = torch.nn.functional.kl_div(spliced, clean, log_target=True, reduction="none").sum(-1)
    assert got["kl"] == pytest.approx(float(kl[:, :-1][predicted].double().mean()), rel=1e-5)
    assert got["kl"] > 0
    assert got["delta_lm_loss"] == pytest.approx(got["ce_sae"] - got["ce_clean"])
    recovered = (got["ce_zero"] - got["ce_sae"]) / (got["ce_zero"] - got["ce_clean"])
    assert got["ce_loss_recovered"] == pytest.approx(recovered)


def test_ce_of_a_softcapped_gemma2_model_equals_hf(tiny_model, ids):
    lm = load_model(tiny_model("gemma2"), device="cpu")
    assert lm.model.config.final_logit_softcapping
    got = _evaluate(FnSAE(64), lm, ids)
    clean, predicted = _direct(lm, ids)
    assert got["ce_clean"] == pytest.approx(_ce(clean, ids, predicted), rel=1e-6)
    assert got["delta_lm_loss"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", HOOK, "blocks.2.hook_resid_mid"])
def test_identity_sae_loses_nothing(tiny_lm, ids, hook):
    got = _evaluate(FnSAE(64), tiny_lm, ids, hook)
    assert got["delta_lm_loss"] == pytest.approx(0.0, abs=1e-6)
    assert got["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert got["kl"] == pytest.approx(0.0, abs=1e-7)
    assert got["kl"] >= 0
    assert got["fvu"] == pytest.approx(0.0, abs=1e-12) and got["mse"] == pytest.approx(0.0)


def test_zero_reconstruction_recovers_nothing(tiny_lm, ids):
    got = _evaluate(FnSAE(64, torch.zeros_like), tiny_lm, ids)
    assert got["ce_sae"] == got["ce_zero"]
    assert got["ce_loss_recovered"] == 0.0
    assert got["ce_zero"] != got["ce_clean"]  # (a random model need not get worse)


def test_bos_eos_and_pad_keep_their_clean_activation(tiny_lm, ids):
    """Zero ablation equals a direct one at SAE positions only, not one that also zeroes BOS."""
    got = _evaluate(FnSAE(64, torch.zeros_like), tiny_lm, ids)
    zeroed, predicted = _direct(tiny_lm, ids, torch.zeros_like)
    assert got["ce_zero"] == pytest.approx(_ce(zeroed, ids, predicted), rel=1e-6)
    with_bos = _sae_mask(ids) | (ids == BOS)
    zeroed_bos, _ = _direct(tiny_lm, ids, torch.zeros_like, splice_mask=with_bos)
    assert abs(got["ce_zero"] - _ce(zeroed_bos, ids, predicted)) > 1e-3


def test_bos_is_excluded_from_every_average(tiny_lm, ids):
    """The SAE never sees BOS/EOS/pad rows; an error on such a row changes nothing."""
    acts = tiny_lm.activations(ids, HOOK)[HOOK]
    bos_row, eos_row, text_row = acts[0, 0], acts[0, 6], acts[0, 3]

    def wrong_at(row):
        return lambda f: torch.where((f == row).all(-1, keepdim=True), f + 10.0, f)

    identity = FnSAE(64)
    reference = _evaluate(identity, tiny_lm, ids)
    seen = torch.cat(identity.seen)
    assert len(seen) == int(_sae_mask(ids).sum()) == reference["n_tokens"]
    for special in (bos_row, eos_row):
        assert not (seen == special).all(-1).any()
        assert _evaluate(FnSAE(64, wrong_at(special)), tiny_lm, ids) == reference
    wrong = _evaluate(FnSAE(64, wrong_at(text_row)), tiny_lm, ids)
    assert wrong["mse"] == pytest.approx(100.0 * 64 / reference["n_tokens"])
    assert wrong["kl"] > 1e-4 and wrong["delta_lm_loss"] != 0


def test_tensor_metrics_equal_evaluate_on_the_masked_activations(tiny_lm, ids):
    sae = saelab.create_sae("jumprelu", 64, 128, seed=1)
    got = _evaluate(sae, tiny_lm, ids)
    acts = tiny_lm.activations(ids, HOOK)[HOOK][_sae_mask(ids)]
    want = saelab.evaluate(sae, acts)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key


def test_streaming_batches_equals_one_batch(tiny_lm, ids):
    sae = saelab.create_sae("topk", 64, 256, k=8, seed=0)
    whole = _evaluate(sae, tiny_lm, ids)
    evaluator = SplicedEvaluator(sae, tiny_lm, HOOK)
    sizes = [evaluator.update(batch) for batch in ids.split(1)]
    streamed = evaluator.result()
    assert sum(sizes) == whole["n_tokens"]
    for key, value in whole.items():
        if not math.isnan(value):
            assert streamed[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def test_chunked_logits_give_the_same_result(tiny_lm, ids, monkeypatch):
    """Chunks of 5 rows give the metrics of one chunk, up to fp32 reordering.

    Only the reduction order changes (the head matmul's blocking depends on the number of rows):
    each fp32 log-prob, a d_model-term dot product (logits of size ~1 here) minus a logsumexp
    over the vocabulary, then moves by ≲ n·eps32 with n = d_model + vocab. CE, a mean of
    −log p ≈ log(vocab), moves by that relative; KL = Σ_v p_clean·(log p_clean − log p_sae) per
    position subtracts two such log-probs, so it moves by ≲ 2·n·eps32 absolute (the sums over
    positions are float64 and add nothing at this scale).
    """
    sae = saelab.create_sae("topk", 64, 256, k=8, seed=0)
    whole = _evaluate(sae, tiny_lm, ids)
    monkeypatch.setattr("saelab.evals.spliced.LOGIT_CHUNK_ELEMENTS", 512 * 5)
    chunked = _evaluate(sae, tiny_lm, ids)
    n_terms = tiny_lm.d_model + tiny_lm.model.config.vocab_size
    eps = torch.finfo(torch.float32).eps
    for key in ("ce_clean", "ce_sae", "ce_zero"):
        assert chunked[key] == pytest.approx(whole[key], rel=n_terms * eps, abs=0), key
    assert chunked["kl"] == pytest.approx(whole["kl"], rel=0, abs=2 * n_terms * eps)
    assert whole["kl"] > 20 * n_terms * eps  # the bound is far below the value it checks


def test_mismatched_sae_width_is_named(tiny_lm, ids):
    with pytest.raises(ValueError, match=r"d_in=32 .* width 64 of hook 'blocks\.1"):
        _evaluate(saelab.create_sae("topk", 32, 64, k=4), tiny_lm, ids)


MLP_IN, MLP_OUT = "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"


def _transcoder(skip: bool) -> saelab.SAE:
    sae = saelab.create_sae(
        "topk", 64, 256, k=8, seed=0, d_out=64, skip_connection=skip,
        hook_name=MLP_IN, target_hook_name=MLP_OUT,
    )  # fmt: skip
    if skip:
        with torch.no_grad():
            sae.W_skip.copy_(0.1 * torch.randn(64, 64, generator=torch.Generator().manual_seed(2)))
    return sae


@pytest.mark.parametrize("skip", [False, True])
def test_a_transcoder_replaces_its_target_with_its_prediction_from_its_input(tiny_lm, ids, skip):
    """SPEC §2.6: ŷ(x at mlp_in) replaces mlp_out; checked with plain torch hooks on the MLP."""
    sae = _transcoder(skip)
    got = _evaluate(sae, tiny_lm, ids, MLP_OUT)
    mask = _sae_mask(ids)
    mlp = tiny_lm.model.model.layers[1].mlp

    def spliced(_module, args, output):
        return torch.where(mask[..., None], sae(args[0]), output)

    handle = mlp.register_forward_hook(spliced)
    try:
        with torch.no_grad():
            log_probs = torch.log_softmax(tiny_lm.model(ids).logits.float(), -1)
    finally:
        handle.remove()
    clean, predicted = _direct(tiny_lm, ids)
    assert got["ce_sae"] == pytest.approx(_ce(log_probs, ids, predicted), rel=1e-6)
    assert got["ce_clean"] == pytest.approx(_ce(clean, ids, predicted), rel=1e-6)
    acts = tiny_lm.activations(ids, [MLP_IN, MLP_OUT])
    rows = torch.cat([acts[MLP_IN][mask], acts[MLP_OUT][mask]], 1)
    for key, value in saelab.evaluate(sae, rows).items():  # FVU etc. against y, not x
        assert got[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
    y, y_hat = acts[MLP_OUT][mask].double(), sae(acts[MLP_IN][mask]).double()
    fvu = float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert got["fvu"] == pytest.approx(fvu, rel=1e-6)


def test_a_transcoder_predicting_zero_is_the_zero_ablation_of_its_target(tiny_lm, ids):
    sae = _transcoder(False)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    got = _evaluate(sae, tiny_lm, ids, MLP_OUT)
    assert got["ce_sae"] == got["ce_zero"] and got["ce_loss_recovered"] == 0.0


def test_a_transcoder_must_read_an_earlier_hook(tiny_lm, ids):
    sae = saelab.create_sae(
        "topk", 64, 256, k=8, d_out=64, hook_name="blocks.2.hook_resid_post",
        target_hook_name=MLP_OUT,
    )  # fmt: skip
    with pytest.raises(ValueError, match="does not come before"):
        _evaluate(sae, tiny_lm, ids, MLP_OUT)
