"""Each SAE's training forward gives the same loss and gradients on the sparse and dense paths."""

import pytest
import torch

import saelab
from saelab.kernels import KernelOptions, SparseCodes, codes

D, N, B = 16, 256, 64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _sae(arch: str, seed: int, **options):
    torch.manual_seed(seed)
    sae = saelab.create_sae(arch, D, N, **options)
    sae.reset_parameters()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05)
        sae.b_dec.normal_(0, 0.05)
    return sae


def _loss_and_grads(sae, x, lam, dead, mode, matmul_dtype=None):
    sae.zero_grad(set_to_none=True)
    options = mode if isinstance(mode, KernelOptions) else KernelOptions(mode, matmul_dtype)
    sae.kernels = options
    out = sae.train_forward(x, lam, dead)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
    return out, grads


def _compare(sae, x, lam=0.3, dead=None, tol=1e-5, matmul_dtype=None, fast="sparse"):
    fast, g_fast = _loss_and_grads(sae, x, lam, dead, fast, matmul_dtype)
    ref, g_ref = _loss_and_grads(sae, x, lam, dead, "dense", matmul_dtype)
    assert set(fast.terms) == set(ref.terms)
    for name in ref.terms:
        assert rel(fast.terms[name], ref.terms[name]) < tol, name
    assert rel(fast.x_hat, ref.x_hat) < tol
    assert rel(fast.feature_acts, ref.feature_acts.detach()) < tol
    # The trainer's L0 and firing read the sparse codes directly; they must match dense f.
    assert isinstance(fast.codes, SparseCodes)
    f = ref.feature_acts.detach().reshape(-1, N)
    assert torch.equal(fast.fired(), (f != 0).any(0))
    assert float(fast.l0()) == pytest.approx(float((f != 0).sum(-1).float().mean()))
    assert set(g_fast) == set(g_ref)
    for name, g in g_ref.items():
        assert rel(g_fast[name], g) < tol, name


@pytest.mark.parametrize("k", [1, 8, 32])
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_topk_sparse_equals_dense(arch, k):
    sae = _sae(arch, 0, k=k)
    x = torch.randn(B, D)
    _compare(sae, x)


@pytest.mark.parametrize("dense_from", [0.05, 1.01])
def test_topk_aux_loss_sparse_equals_dense(dense_from, monkeypatch):
    """AuxK with k_aux = 8 of 86 dead latents (9%): on dense (tokens × dead) products with the
    switch at 5%, on sparse codes with it out of reach; both equal the dense reference."""
    monkeypatch.setattr(codes, "AUX_DENSE_FRACTION", dense_from)
    sae = _sae("topk", 1, k=8)
    x = torch.randn(B, D)
    dead = torch.zeros(N, dtype=torch.bool)
    dead[::3] = True
    _compare(sae, x, dead=dead)


def test_topk_leading_dims_kept():
    sae = _sae("topk", 2, k=4)
    x = torch.randn(4, 16, D)
    sae.kernels = KernelOptions(mode="sparse")
    out = sae.train_forward(x, 0.0)
    assert out.x_hat.shape == x.shape and out.feature_acts.shape == (4, 16, N)


@pytest.mark.parametrize("theta", [0.05, 0.2, 0.6])
@pytest.mark.parametrize("eps", [0.001, 0.1])
def test_jumprelu_sparse_equals_dense_across_l0(theta, eps):
    sae = _sae("jumprelu", 3, bandwidth=eps)
    with torch.no_grad():
        sae.threshold.fill_(theta)
    x = torch.randn(B, D)
    _compare(sae, x)


def test_jumprelu_window_entries_train_the_threshold():
    sae = _sae("jumprelu", 4, bandwidth=0.5)
    x = torch.randn(B, D)
    with torch.no_grad():
        sae.threshold.fill_(0.3)
    _compare(sae, x, lam=2.0)
    assert sae.threshold.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", ["quadratic", "l0"])
@pytest.mark.parametrize("matmul_dtype", [None, torch.bfloat16])
def test_jumprelu_sparse_codes_in_a_dense_window_equal_dense(loss, matmul_dtype):
    """ "auto" with a kernel window above max_density but codes below it: sparse codes, θ's
    window gradient from one dense ∂L/∂x̂·W_decᵀ; every term (frequency cap, AuxK, pre-act loss
    on dead latents) and gradient equals the dense path's."""
    x = torch.randn(B, D)
    pre = _sae("jumprelu", 8).pre_acts(x).detach()
    theta, low = float(pre.quantile(0.97)), float(pre.quantile(0.6))
    sae = _sae("jumprelu", 8, bandwidth=theta - low, sparsity_loss=loss, max_frequency=0.02)
    with torch.no_grad():
        sae.threshold.fill_(theta)
    window = float((pre > theta - sae.bandwidth / 2).float().mean())
    assert float((pre > theta).float().mean()) < 0.1 < window  # codes sparse, window dense
    dead = torch.zeros(N, dtype=torch.bool)
    dead[::4] = True
    options = KernelOptions(max_density=0.1, matmul_dtype=matmul_dtype)
    tol = 1e-5 if matmul_dtype is None else 1e-2
    _compare(sae, x, lam=2.0, dead=dead, tol=tol, matmul_dtype=matmul_dtype, fast=options)
    gates = sae.workspace._gates  # the window gate said dense, the codes gate sparse
    assert (gates["window"].sparse, gates["codes"].sparse) == (False, True)
    assert sae.threshold.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_bf16_matmul_path_within_tolerance(arch):
    """Sparse kernels with a bf16 encoder matmul vs the dense path under the same autocast."""
    sae = _sae(arch, 5, **({"k": 8} if arch == "topk" else {"bandwidth": 0.1}))
    if arch == "jumprelu":
        with torch.no_grad():
            sae.threshold.fill_(0.3)
    x = torch.randn(B, D)
    _compare(sae, x, tol=1e-2, matmul_dtype=torch.bfloat16)
    assert sae.W_enc.dtype == torch.float32


def test_auto_mode_defaults():
    sae = _sae("topk", 6, k=4)
    x = torch.randn(B, D)
    auto, _ = _loss_and_grads(sae, x, 0.0, None, "auto")
    sparse, _ = _loss_and_grads(sae, x, 0.0, None, "sparse")
    assert torch.equal(auto.loss, sparse.loss)


@pytest.fixture
def one_thread():
    """Tiny matmuls: one thread avoids thread hand-off overhead dominating the step."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _final_loss(arch: str, mode: str, lam: float, **options) -> float:
    """Mean loss over the last 100 of 2,000 Adam steps on synthetic sparse data."""
    g = torch.Generator().manual_seed(0)
    dictionary = torch.nn.functional.normalize(torch.randn(512, D, generator=g), dim=1)
    codes = torch.rand(8192, 512, generator=g) * (torch.rand(8192, 512, generator=g) < 0.01)
    data = codes @ dictionary
    data /= data.pow(2).sum(-1).mean().sqrt()
    sae = _sae(arch, 7, **options)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    losses = []
    sae.kernels = KernelOptions(mode=mode)
    for _ in range(2000):
        x = data[torch.randint(0, data.shape[0], (B,), generator=g)]
        out = sae.train_forward(x, lam)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_gradient()
        opt.step()
        sae.after_step()
        losses.append(out.loss.detach())
    return float(torch.stack(losses[-100:]).mean())


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch,lam,options",
    [("topk", 0.0, {"k": 4}), ("jumprelu", 1e-3, {"bandwidth": 0.05, "init_threshold": 0.05})],
)
def test_2000_step_run_matches_dense(arch, lam, options, one_thread):
    fast = _final_loss(arch, "sparse", lam, **options)
    dense = _final_loss(arch, "dense", lam, **options)
    assert abs(fast - dense) <= 0.01 * abs(dense)


@pytest.mark.slow
def test_compiled_dense_jumprelu_equals_eager():
    """compile=True: the dense objective (explicit and auto's fallback) gives eager's loss and grads,
    for each sparsity coefficient of a warm-up schedule."""
    sae = _sae("jumprelu", 8, bandwidth=0.1)
    with torch.no_grad():
        sae.threshold.fill_(0.05)  # ≈ half the entries in the window: auto falls back to dense
    x = torch.randn(B, D)
    torch._dynamo.reset()
    for lam in (0.0, 0.3, 0.7):
        ref, g_ref = _loss_and_grads(sae, x, lam, None, "dense")
        for mode in ("dense", "auto"):
            sae.zero_grad(set_to_none=True)
            sae.kernels = KernelOptions(mode=mode, compile=True)
            out = sae.train_forward(x, lam)
            out.loss.backward()
            assert not isinstance(out.codes, SparseCodes)
            assert rel(out.loss, ref.loss) < 1e-5 and rel(out.x_hat, ref.x_hat) < 1e-5
            for name, g in g_ref.items():
                assert rel(sae.get_parameter(name).grad, g) < 1e-5, (mode, lam, name)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # really compiled


def test_compile_option_is_checked():
    with pytest.raises(ValueError, match="compile"):
        KernelOptions(compile="yes")


def test_two_saes_with_different_kernel_options_train_side_by_side():
    """One process, one lockstep run: a sparse-kernel and a dense-kernel JumpReLU SAE from the
    same init each take their own path every step and end at the same weights."""
    data = torch.randn(2048, D)
    saes = []
    for mode in ("sparse", "dense"):
        sae = saelab.create_sae("jumprelu", D, N, seed=3, target_l0=8)
        sae.kernels = KernelOptions(mode=mode)
        paths = []

        def recorded(x, lam, dead=None, target=None, forward=sae.train_forward, paths=paths):
            out = forward(x, lam, dead, target)
            paths.append(isinstance(out.codes, SparseCodes))
            return out

        sae.train_forward = recorded
        saes.append((sae, paths))
    # float32 matmuls on any CPU: the two paths' products then differ only in summation order.
    config = saelab.TrainConfig(total_tokens=2048, batch_size=128, seed=0, matmul_dtype="float32")
    saelab.train([sae for sae, _ in saes], data, config)
    (sparse, sparse_paths), (dense, dense_paths) = saes
    assert len(sparse_paths) == 16 and all(sparse_paths) and not any(dense_paths)
    for name, p in dense.named_parameters():
        assert rel(sparse.get_parameter(name), p) < 1e-4, name
