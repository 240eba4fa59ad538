"""Transcoders (SPEC §2.6) of every architecture: trained with separate constants for x and y,
saved with both folded in, loaded back bit-exactly, and loaded by SAELens with equal outputs."""

import pytest
import torch

import saelab
from saelab.evals.toy import SyntheticDictionary

ARCHS = ["relu", "topk", "batchtopk", "gated", "jumprelu", "matryoshka"]
D_IN, D_OUT, D_SAE = 16, 12, 48
OPTIONS = {"topk": {"k": 4}, "batchtopk": {"k": 4}, "matryoshka": {"k": 4}}
TRAIN = {"total_tokens": 300 * 64, "batch_size": 64, "lr": 1e-3, "seed": 0}
UNIT_ROUNDOFF = torch.finfo(torch.float32).eps / 2
# Architectures SAELens 6 has a transcoder class for (as saved: BatchTopK and Matryoshka are
# saved as JumpReLU); TopK and Gated transcoders are saelab-only.
SAELENS_LOADS = ["relu", "batchtopk", "jumprelu", "matryoshka"]


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows [x | y], held-out rows), raw: y is a sparse nonlinear map of x, on
    another scale and offset than x, so C_x ≠ C_y and folding them matters."""
    toy = SyntheticDictionary(d=D_IN, m=64, active=4.0, seed=0)
    mix = torch.randn(D_IN, D_OUT, generator=torch.Generator().manual_seed(1))

    def rows(n: int) -> torch.Tensor:
        x = 3.0 * toy.sample(n) + 0.5
        return torch.cat([x, 0.2 * (x @ mix).relu() - 1.0], 1)

    return rows(8_000), rows(500)


@pytest.fixture(scope="module")
def trained(data) -> dict[tuple[str, bool], saelab.SAE]:
    saes = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for arch in ARCHS:
            for skip in (False, True):
                sae = saelab.create_sae(
                    arch, D_IN, D_SAE, d_out=D_OUT, skip_connection=skip, seed=0,
                    target_hook_name="blocks.0.hook_mlp_out", **OPTIONS.get(arch, {}),
                )  # fmt: skip
                with pytest.warns(UserWarning, match="cycled"):
                    saelab.train(sae, data[0], saelab.TrainConfig(**TRAIN))
                saes[arch, skip] = sae
    finally:
        torch.set_num_threads(threads)
    return saes


def _fvu(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_transcoder_predicts_the_target_on_raw_activations(arch, skip, trained, data):
    sae, rows = trained[arch, skip], data[1]
    x, y = rows[:, :D_IN], rows[:, D_IN:]
    cfg = sae.cfg
    assert not cfg.apply_b_dec_to_input and cfg.transcoder and cfg.out_dim == D_OUT
    assert cfg.normalization_constant != cfg.target_normalization_constant
    with torch.no_grad():
        # Folded constants: the saved transcoder maps raw x to raw y (the mean predictor: 1).
        assert _fvu(y, sae(x)) < 0.5
        assert sae(x).shape == y.shape


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_transcoder_round_trips_bit_exactly(arch, skip, trained, data, tmp_path):
    sae, x = trained[arch, skip], data[1][:, :D_IN]
    loaded = saelab.load_sae(sae.save(tmp_path / "tc"))
    assert loaded.cfg.d_out == D_OUT and loaded.cfg.skip_connection == skip
    assert loaded.cfg.target_hook_name == "blocks.0.hook_mlp_out"
    assert loaded.cfg.target_normalization_constant == sae.cfg.target_normalization_constant
    with torch.no_grad():
        f = sae.encode(x)
        assert (f > 0).any()
        assert torch.equal(loaded.encode(x), f)
        assert torch.equal(loaded(x), sae(x))


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("arch", SAELENS_LOADS)
def test_saelens_loads_transcoder_with_equal_outputs(arch, skip, trained, data, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae, x = trained[arch, skip], data[1][:, :D_IN]
    sae.save(tmp_path / "tc")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "tc"))
    expected = "skip_transcoder" if skip else "transcoder"
    assert type(theirs).__name__.lower().endswith(expected.replace("_", ""))
    with torch.no_grad():
        f = sae.encode(x)
        encode_atol = (
            8 * D_IN**0.5 * UNIT_ROUNDOFF * float(x.norm(dim=1).max() * sae.W_enc.norm(dim=0).max())
        )
        torch.testing.assert_close(theirs.encode(x), f, rtol=1e-5, atol=encode_atol)
        atol = (
            8
            * D_SAE**0.5
            * UNIT_ROUNDOFF
            * float(f.norm(dim=1).max() * sae.W_dec.norm(dim=0).max())
        )
        atol += D_SAE**0.5 * encode_atol * float(sae.W_dec.norm(dim=0).max())
        if skip:
            atol += (
                8
                * D_IN**0.5
                * UNIT_ROUNDOFF
                * float(x.norm(dim=1).max() * sae.W_skip.norm(dim=1).max())
            )
        torch.testing.assert_close(theirs(x), sae(x), rtol=1e-5, atol=atol)


@pytest.mark.parametrize("arch", ["topk", "gated"])
def test_transcoders_saelens_cannot_hold_get_a_name_it_refuses(arch, trained, tmp_path):
    import json

    path = trained[arch, False].save(tmp_path / "tc")
    raw = json.loads((path / "cfg.json").read_text())
    assert raw["architecture"] == f"saelab_{'topk' if arch == 'topk' else 'gated'}_transcoder"
    assert raw["d_out"] == D_OUT and raw["metadata"]["hook_name_out"] == "blocks.0.hook_mlp_out"
