"""Trained SAEs of every architecture survive save → load: bit-exact in saelab, equal within
fp32 rounding in SAELens (DESIGN.md "Files"; issue 15).

tests/formats/test_files.py covers hand-perturbed weights with b_dec still applied to the
input; here each SAE comes out of saelab.train, so its normalisation constant C and b_dec are
folded into the weights (SPEC §1) and any threshold was set from data and trained (SPEC §2.0).
"""

import copy

import pytest
import torch

import saelab
from saelab.evals.toy import SyntheticDictionary
from saelab.sae.batchtopk import NOT_ESTIMATED

ARCHS = ["relu", "topk", "batchtopk", "gated", "jumprelu", "matryoshka"]
D_IN, D_SAE = 16, 48
OPTIONS = {"topk": {"k": 4}, "batchtopk": {"k": 4}, "matryoshka": {"k": 4}}
# 300 steps of 64 tokens on toy data scaled and shifted away from E‖x‖² = 1, so C ≠ 1.
TRAIN = {"total_tokens": 300 * 64, "batch_size": 64, "lr": 1e-3, "seed": 0}
# fp32 unit roundoff 2^-24: one rounding changes a value by at most this fraction.
UNIT_ROUNDOFF = torch.finfo(torch.float32).eps / 2


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """(training activations, held-out activations), raw (not normalised)."""
    toy = SyntheticDictionary(d=D_IN, m=64, active=4.0, seed=0)
    return 3.0 * toy.sample(8_000) + 0.5, 3.0 * toy.sample(500) + 0.5


@pytest.fixture(scope="module")
def trained(data) -> dict[str, saelab.SAE]:
    """One SAE per architecture after a short saelab.train run."""
    saes = {}
    # One thread: these matmuls are tiny, and a second thread on a busy machine only waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for arch in ARCHS:
            sae = saelab.create_sae(arch, D_IN, D_SAE, seed=0, **OPTIONS.get(arch, {}))
            initial = copy.deepcopy(sae.state_dict())
            with pytest.warns(UserWarning, match="cycled"):
                saelab.train(sae, data[0], saelab.TrainConfig(**TRAIN))
            for name, value in sae.state_dict().items():
                assert not torch.equal(value, initial[name]), f"{arch}.{name} at its init value"
            saes[arch] = sae
    finally:
        torch.set_num_threads(threads)
    return saes


def _rounding_atol(a: torch.Tensor, b: torch.Tensor) -> float:
    """How far two fp32 evaluation orders of a @ b may differ per entry.

    A dot product of n terms rounds n times, each error ≤ u·|partial sum|; the errors add like
    a random walk (√n), on the scale ‖a_row‖·‖b_col‖ (Cauchy–Schwarz). ×8 for headroom.
    """
    n = a.shape[-1]
    return 8 * n**0.5 * UNIT_ROUNDOFF * float(a.norm(dim=-1).max() * b.norm(dim=0).max())


@pytest.mark.parametrize("arch", ARCHS)
def test_trained_sae_round_trips_bit_exactly(arch, trained, data, tmp_path):
    sae, x = trained[arch], data[1]
    assert not sae.cfg.apply_b_dec_to_input and sae.cfg.normalization_constant != 1.0
    sae.save(tmp_path / "sae")
    loaded = saelab.load_sae(tmp_path / "sae")
    assert loaded.cfg.normalization_constant == sae.cfg.normalization_constant
    with torch.no_grad():
        f = sae.encode(x)
        assert (f > 0).any(), "nothing fires: the comparison would be vacuous"
        assert torch.equal(loaded.encode(x), f)
        assert torch.equal(loaded(x), sae(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_loads_trained_sae_with_equal_outputs(arch, trained, data, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae, x = trained[arch], data[1]
    sae.save(tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    with torch.no_grad():
        # Pre-activations and thresholds are computed by the same operations in both libraries
        # (C and b_dec folded: x @ W_enc + b_enc), so no latent can switch on in one and off in
        # the other. Only Gated's magnitudes differ in evaluation order, (x @ W) ⊙ e^r against
        # x @ (W ⊙ e^r): a d_in-term reduction. x̂ adds a d_sae-term reduction over f.
        w_mag = sae.W_enc * sae.r_mag.exp() if arch == "gated" else sae.W_enc
        encode_atol = _rounding_atol(x, w_mag)
        f = sae.encode(x)
        torch.testing.assert_close(theirs.encode(x), f, rtol=1e-5, atol=encode_atol)
        decode_atol = _rounding_atol(f, sae.W_dec)
        torch.testing.assert_close(theirs.decode(f), sae.decode(f), rtol=1e-5, atol=decode_atol)
        # An encode difference δ per latent moves x̂_j by ≤ √d_sae·δ·‖W_dec[:, j]‖.
        spread = D_SAE**0.5 * encode_atol * float(sae.W_dec.norm(dim=0).max())
        torch.testing.assert_close(theirs(x), sae(x), rtol=1e-5, atol=decode_atol + spread)


def test_batchtopk_refuses_to_save_before_its_threshold_exists(data, tmp_path):
    sae = saelab.create_sae("batchtopk", D_IN, D_SAE, k=4, seed=0)
    with pytest.raises(ValueError, match=NOT_ESTIMATED.replace("(", r"\(").replace(")", r"\)")):
        sae.save(tmp_path / "untrained")
    x = data[0] / data[0].pow(2).sum(-1).mean().sqrt()
    sae.initialize_from_data(x)
    # θ = the smallest of the top k·N activations of the sample: L0 = k on that sample.
    assert float((sae.encode(x) > 0).sum(-1).float().mean()) == pytest.approx(4, abs=1e-3)
    loaded = saelab.load_sae(sae.save(tmp_path / "initialised"))
    assert torch.equal(loaded.encode(x), sae.encode(x))
