"""Matryoshka SAE (SPEC §2.5): the nested prefix loss from one code, on both kernel paths, and
the hierarchical toy where BatchTopK absorbs the parents and Matryoshka keeps them."""

import pytest
import torch

import saelab
from saelab.evals.toy import HierarchicalDictionary, mmcs
from saelab.kernels import KernelOptions, SparseCodes
from saelab.sae.matryoshka import default_group_sizes

D, N, B = 12, 40, 64
GROUPS = [4, 6, 10, 20]


def _sae(**options) -> saelab.SAE:
    sae = saelab.create_sae("matryoshka", D, N, seed=0, k=6, group_sizes=GROUPS, **options)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return sae


def _brute_force_loss(sae: saelab.SAE, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """(1/G)·Σ_g ‖x − (f_{1:m_g} W_dec[1:m_g] + b_dec)‖², every prefix decoded on its own."""
    ends = torch.tensor(GROUPS).cumsum(0).tolist()
    losses = [(x - (f[:, :m] @ sae.W_dec[:m] + sae.b_dec)).pow(2).sum(-1).mean() for m in ends]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_nested_loss_equals_every_prefix_decoded_alone(mode):
    sae = _sae()
    sae.kernels = KernelOptions(mode=mode)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(2))
    out = sae.train_forward(x, 0.0)
    f = out.feature_acts.detach()
    assert isinstance(out.codes, SparseCodes) == (mode == "sparse")
    assert int((f != 0).sum()) == 6 * B  # BatchTopK: k·B entries across the batch
    torch.testing.assert_close(out.terms["mse_loss"], _brute_force_loss(sae, x, f))
    torch.testing.assert_close(out.x_hat, f @ sae.W_dec + sae.b_dec)


def test_sparse_and_dense_paths_give_the_same_gradients():
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(2))
    dead = torch.zeros(N, dtype=torch.bool)
    dead[::5] = True
    grads = {}
    for mode in ("sparse", "dense"):
        sae = _sae()
        sae.kernels = KernelOptions(mode=mode)
        out = sae.train_forward(x, 0.0, dead)
        assert set(out.terms) == {"mse_loss", "aux_loss"}
        out.loss.backward()
        grads[mode] = {n: p.grad for n, p in sae.named_parameters()}
    for name, g in grads["dense"].items():
        torch.testing.assert_close(grads["sparse"][name], g, rtol=1e-5, atol=1e-6)


def test_default_groups_double_up_to_the_width():
    assert default_group_sizes(16384) == [1024, 1024, 2048, 4096, 8192]
    assert default_group_sizes(48) == [3, 3, 6, 12, 24]
    assert default_group_sizes(4) == [1, 1, 2]
    assert default_group_sizes(1) == [1]
    assert saelab.create_sae("matryoshka", 8, 48, k=2).cfg.group_sizes == [3, 3, 6, 12, 24]


@pytest.mark.slow
def test_matryoshka_keeps_the_parents_that_batchtopk_absorbs():
    """Parents that only fire with one of their children (tied coefficients): BatchTopK (and
    JumpReLU) fold each parent into its children's latents (cosine 1/√2 with the parent), while
    a Matryoshka first prefix, which must reconstruct alone, keeps a latent per parent, with
    BatchTopK codes and with JumpReLU codes alike."""
    toy = HierarchicalDictionary(d=64, parents=8, children=8, parent_rate=0.15, tied=True)
    x = toy.sample(400_000)
    config = saelab.TrainConfig(total_tokens=400_000, batch_size=256, lr=3e-3, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only waits
    try:
        recovered = {}
        nested = {"group_sizes": [8, 72]}
        for arch, options in (
            ("batchtopk", {"k": 2}),
            ("matryoshka", {"k": 2, **nested}),
            ("jumprelu", {"target_l0": 2}),
            ("matryoshka_jumprelu", {"target_l0": 2, **nested}),
        ):
            sae = saelab.create_sae(arch, 64, 80, seed=1, **options)
            saelab.train(sae, x, config)
            recovered[arch] = mmcs(toy.parent_features, sae.W_dec.detach())
            assert saelab.evaluate(sae, x[:20_000])["fvu"] < 0.05, arch
    finally:
        torch.set_num_threads(threads)
    # Measured at seed 1: BatchTopK 0.727, Matryoshka 0.957; JumpReLU 0.715, with JumpReLU
    # codes 0.958.
    for flat, nested_arch in (("batchtopk", "matryoshka"), ("jumprelu", "matryoshka_jumprelu")):
        assert recovered[nested_arch] >= 0.9, recovered
        assert recovered[flat] <= 0.8, recovered
        assert recovered[nested_arch] - recovered[flat] >= 0.15, recovered


def _jumprelu_sae() -> saelab.SAE:
    sae = saelab.create_sae(
        "matryoshka_jumprelu", D, N, seed=0, target_l0=6, group_sizes=GROUPS, bandwidth=0.02
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        sae.threshold.fill_(0.05)
    return sae


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_jumprelu_codes_get_the_same_nested_loss(mode):
    """matryoshka_jumprelu: the nested loss of §2.5 on JumpReLU codes (§2.4), both paths."""
    sae = _jumprelu_sae()
    sae.kernels = KernelOptions(mode=mode)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(2))
    out = sae.train_forward(x, 1.0)
    f = out.feature_acts.detach()
    assert isinstance(out.codes, SparseCodes) == (mode == "sparse")
    assert 0 < int((f != 0).sum()) < f.numel()
    assert set(out.terms) == {"mse_loss", "sparsity_loss"}
    torch.testing.assert_close(out.terms["mse_loss"], _brute_force_loss(sae, x, f))
    torch.testing.assert_close(out.x_hat, f @ sae.W_dec + sae.b_dec)


def test_jumprelu_nested_loss_gives_the_same_gradients_on_both_paths():
    """θ included: every prefix term reaches it through the STE on the kernel window."""
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(2))
    grads = {}
    for mode in ("sparse", "dense"):
        sae = _jumprelu_sae()
        sae.kernels = KernelOptions(mode=mode)
        sae.train_forward(x, 1.0).loss.backward()
        grads[mode] = {n: p.grad for n, p in sae.named_parameters()}
    assert grads["dense"]["threshold"].abs().sum() > 0
    for name, g in grads["dense"].items():
        torch.testing.assert_close(grads["sparse"][name], g, rtol=1e-5, atol=1e-6)


def test_jumprelu_variant_saves_as_jumprelu_and_loads_bit_exactly(tmp_path):
    sae = _jumprelu_sae()
    sae.fold_normalization(2.0)
    loaded = saelab.load_sae(sae.save(tmp_path / "m"))
    assert loaded.cfg.architecture == "jumprelu"
    assert loaded.cfg.metadata["trained_as"] == "matryoshka_jumprelu"
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(x), sae(x))
