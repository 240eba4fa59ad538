"""SAE files: bit-exact round trips, SAELens loads them, Gemma Scope npz, clear errors."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import saelab
from saelab.formats import SAEFileError, save_gemma_scope, save_sae_dir

ARCHS = ["relu", "topk", "batchtopk", "gated", "jumprelu", "matryoshka"]
# Trained with BatchTopK codes and saved as JumpReLU with their global threshold (SPEC §2.2, §2.5).
GLOBAL_THRESHOLD = ("batchtopk", "matryoshka")


def _trained_like(arch: str, seed: int = 0) -> saelab.SAE:
    """An SAE with every parameter non-trivial (as after training), b_dec folded or not."""
    sae = saelab.create_sae(
        arch, 16, 48, seed=seed, model_name="tiny", hook_name="blocks.0.hook_resid_post"
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name != "threshold":
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        if arch == "jumprelu":
            sae.threshold.copy_(0.05 + 0.1 * torch.rand(48, generator=g))
    if arch in GLOBAL_THRESHOLD:
        sae.train_forward(torch.randn(64, 16, generator=g), 0.0)
    return sae


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_is_bit_exact(arch, tmp_path):
    sae = _trained_like(arch)
    sae.save(tmp_path / "sae")
    loaded = saelab.load_sae(tmp_path / "sae")
    x = torch.randn(200, 16)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded(x), sae(x))
    assert loaded.cfg.hook_name == "blocks.0.hook_resid_post"
    if arch not in GLOBAL_THRESHOLD:
        for (name, p), q in zip(
            sae.state_dict().items(), loaded.state_dict().values(), strict=True
        ):
            assert torch.equal(p, q), name


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_loads_our_files_and_agrees(arch, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = _trained_like(arch)
    sae.save(tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    expected_arch = {"relu": "standard", "batchtopk": "jumprelu", "matryoshka": "jumprelu"}.get(
        arch, arch
    )
    assert theirs.cfg.architecture() == expected_arch
    x = torch.randn(300, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
        f = sae.encode(x)
        torch.testing.assert_close(theirs.decode(f), sae.decode(f), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs(x), sae(x), rtol=1e-5, atol=1e-5)


def test_gated_can_be_saved_as_jumprelu(tmp_path):
    sae = _trained_like("gated")
    save_sae_dir(sae, tmp_path / "j", as_jumprelu=True)
    j = saelab.load_sae(tmp_path / "j")
    assert j.cfg.architecture == "jumprelu" and j.cfg.metadata["trained_as"] == "gated"
    x = torch.randn(300, 16)
    torch.testing.assert_close(j.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)


def test_gemma_scope_npz_equals_numpy_encode_decode(tmp_path):
    rng = np.random.default_rng(0)
    params = {
        "W_enc": rng.normal(size=(16, 40)).astype(np.float32),
        "W_dec": rng.normal(size=(40, 16)).astype(np.float32),
        "b_enc": rng.normal(size=40).astype(np.float32),
        "b_dec": rng.normal(size=16).astype(np.float32),
        "threshold": rng.uniform(0.1, 1.0, size=40).astype(np.float32),
    }
    np.savez(tmp_path / "params.npz", **params)
    sae = saelab.load_sae(tmp_path / "params.npz")
    x = rng.normal(size=(100, 16)).astype(np.float32)
    pre = x @ params["W_enc"] + params["b_enc"]
    f = np.maximum(pre, 0) * (pre > params["threshold"])
    x_hat = f @ params["W_dec"] + params["b_dec"]
    np.testing.assert_allclose(
        sae.encode(torch.from_numpy(x)).detach().numpy(), f, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        sae(torch.from_numpy(x)).detach().numpy(), x_hat, rtol=1e-4, atol=1e-4
    )
    assert saelab.load_sae(tmp_path).cfg.d_sae == 40  # the folder holding params.npz also works
    save_gemma_scope(sae, tmp_path / "again.npz")
    again = np.load(tmp_path / "again.npz")
    for k, v in params.items():
        np.testing.assert_array_equal(again[k], v)


def test_corrupt_safetensors_is_reported(tmp_path):
    sae = _trained_like("jumprelu")
    sae.save(tmp_path / "sae")
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SAEFileError, match=r"sae_weights\.safetensors: not a readable safetensors"):
        saelab.load_sae(tmp_path / "sae")


def test_wrong_d_in_in_cfg_is_reported(tmp_path):
    sae = _trained_like("topk")
    sae.save(tmp_path / "sae")
    cfg_path = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["d_in"] = 17
    cfg["saelab"]["d_in"] = 17
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(
        SAEFileError, match=r"tensor .W_(enc|dec). has shape .* but the config \(d_in=17"
    ):
        saelab.load_sae(tmp_path / "sae")


def test_plain_saelens_cfg_with_wrong_d_in_is_reported(tmp_path):
    sae = _trained_like("relu")
    sae.save(tmp_path / "sae")
    cfg_path = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["saelab"]
    cfg["d_in"] = 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(SAEFileError, match=r"but the config \(d_in=3, d_sae=48\)"):
        saelab.load_sae(tmp_path / "sae")


def test_npz_missing_threshold_is_reported(tmp_path):
    np.savez(
        tmp_path / "params.npz",
        W_enc=np.zeros((4, 8)),
        W_dec=np.zeros((8, 4)),
        b_enc=np.zeros(8),
        b_dec=np.zeros(4),
    )
    with pytest.raises(SAEFileError, match=r"params\.npz: missing array\(s\) \['threshold'\]"):
        saelab.load_sae(tmp_path / "params.npz")


def test_other_bad_files_are_reported(tmp_path):
    with pytest.raises(SAEFileError, match="no such file"):
        saelab.load_sae(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFileError, match="not an SAE"):
        saelab.load_sae(tmp_path / "empty")
    sae = _trained_like("jumprelu")
    sae.save(tmp_path / "sae")
    cfg_path = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["saelab"]["architecture"] = "mystery"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(SAEFileError, match="unknown SAE architecture 'mystery'"):
        saelab.load_sae(tmp_path / "sae")
    cfg_path.write_text("{not json")
    with pytest.raises(SAEFileError, match="not valid JSON"):
        saelab.load_sae(tmp_path / "sae")
    state = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert set(state) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
