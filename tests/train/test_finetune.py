"""Fine-tuning (SPEC §2.0): an SAE loaded from a file is trained from its weights, never
re-initialised, with its stored normalisation unfolded before and folded back after."""

import pytest
import torch

import saelab
from saelab.evals.toy import SyntheticDictionary
from saelab.formats.gemmascope import save_gemma_scope


@pytest.fixture(scope="module")
def data():
    toy = SyntheticDictionary(d=16, m=48, active=3.0, seed=1)
    return 7.0 * toy.sample(40_000), 7.0 * toy.sample(2_000)


def _trained(arch, data, tmp_path):
    x, _ = data
    sae = saelab.create_sae(arch, 16, 64, seed=0, **({"k": 4} if arch == "topk" else {}))
    saelab.train(sae, x, saelab.TrainConfig(total_tokens=20_480, batch_size=256))
    return sae


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_loaded_sae_resumes_from_its_weights(arch, data, tmp_path):
    x, held = data
    sae = _trained(arch, data, tmp_path)
    loaded = saelab.load_sae(sae.save(tmp_path / arch))
    assert not loaded.needs_data_init
    before = loaded.forward(held).detach()
    init = dict(loaded.cfg.metadata["init"])
    # An LR of ~0 leaves the weights where they were: what comes back must encode as before.
    saelab.train(loaded, x, saelab.TrainConfig(total_tokens=2_048, batch_size=256, lr=1e-12))
    after = loaded.forward(held).detach()
    # fp32: unfolding and refolding C multiplies each weight by C and 1/C (a few ulps each).
    scale = before.abs().max()
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * float(scale))
    assert loaded.cfg.metadata["init"] == init
    assert loaded.cfg.normalization_constant == pytest.approx(
        sae.cfg.normalization_constant, rel=1e-6
    )


def test_gemma_scope_npz_fine_tunes_from_its_weights(data, tmp_path):
    x, held = data
    sae = _trained("jumprelu", data, tmp_path)
    npz = save_gemma_scope(sae, tmp_path / "params.npz")
    loaded = saelab.load_sae(npz)
    fvu_before = saelab.evaluate(loaded, held)["fvu"]
    saelab.train(loaded, x, saelab.TrainConfig(total_tokens=10_240, batch_size=256, lr=1e-4))
    fvu_after = saelab.evaluate(loaded, held)["fvu"]
    # A re-initialised SAE would start near FVU 1; a fine-tuned one stays near where it was.
    assert fvu_after < 1.5 * fvu_before + 0.01, (fvu_before, fvu_after)
    assert not loaded.cfg.apply_b_dec_to_input


def test_loaded_transcoder_resumes_from_its_weights_with_both_constants(data, tmp_path):
    """SPEC §2.6: C_x and C_y are unfolded before fine-tuning and folded back after."""
    x, held = data
    mix = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
    rows = torch.cat([x, 0.1 * (x @ mix).relu()], 1)
    sae = saelab.create_sae("jumprelu", 16, 64, seed=0, d_out=8, skip_connection=True)
    saelab.train(sae, rows, saelab.TrainConfig(total_tokens=20_480, batch_size=256))
    loaded = saelab.load_sae(sae.save(tmp_path / "tc"))
    before = loaded.forward(held).detach()
    saelab.train(loaded, rows, saelab.TrainConfig(total_tokens=2_048, batch_size=256, lr=1e-12))
    after = loaded.forward(held).detach()
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()))
    for name in ("normalization_constant", "target_normalization_constant"):
        assert getattr(loaded.cfg, name) == pytest.approx(getattr(sae.cfg, name), rel=1e-6)
