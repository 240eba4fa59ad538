"""saelab.kernels: every sparse kernel equals its dense reference, outputs and gradients."""

import pytest
import torch

from saelab.kernels import (
    KernelOptions,
    SparsePattern,
    Workspace,
    dense_pre_acts,
    dense_pre_acts_with_grad,
    jumprelu_window,
    sparse_decode,
    sparse_pre_acts,
)
from saelab.kernels.encoder import _transposed
from saelab.kernels.pattern import flat_nonzero

B, D, N = 48, 12, 96


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (0 when both vanish)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _weights(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=dtype)
    W_enc = torch.randn(D, N, generator=g, dtype=dtype).requires_grad_()
    b_enc = (0.1 * torch.randn(N, generator=g, dtype=dtype)).requires_grad_()
    W_dec = torch.randn(N, D, generator=g, dtype=dtype).requires_grad_()
    b_dec = (0.1 * torch.randn(D, generator=g, dtype=dtype)).requires_grad_()
    return x, W_enc, b_enc, W_dec, b_dec


def _grads(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("k", [1, 4, 16, N])
@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_encoder_and_decoder_match_dense_topk(k, seed):
    x, W_enc, b_enc, W_dec, b_dec = _weights(seed)
    params = [W_enc, b_enc, W_dec, b_dec]
    target = torch.randn(B, D, generator=torch.Generator().manual_seed(seed + 7))

    sae_in = x - b_dec
    pre = dense_pre_acts(sae_in.detach(), W_enc.detach(), b_enc.detach())
    idx = pre.relu().topk(k, dim=-1).indices
    pattern = SparsePattern.from_topk(idx, N)
    values = sparse_pre_acts(sae_in, W_enc, b_enc, pre, pattern).relu()
    x_hat = sparse_decode(values, W_dec, b_dec, pattern)
    loss = (x_hat - target).pow(2).sum()
    fast = _grads(loss, params)

    ref_pre = (x - b_dec) @ W_enc + b_enc
    mask = torch.zeros(B, N, dtype=torch.bool).scatter(1, idx, True)
    f = (ref_pre * mask).relu()
    ref_x_hat = f @ W_dec + b_dec
    ref_loss = (ref_x_hat - target).pow(2).sum()
    dense = _grads(ref_loss, params)

    assert rel(x_hat, ref_x_hat) < 1e-5
    assert rel(values, pattern.gather(f)) < 1e-5
    for a, b in zip(fast, dense, strict=True):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5])
def test_sparse_kernels_match_dense_on_a_mask_pattern(density):
    x, W_enc, b_enc, W_dec, b_dec = _weights(3)
    params = [W_enc, b_enc, W_dec, b_dec]
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(B, N, generator=g) < density
    mask[0, 0] = True
    pattern = SparsePattern.from_mask(mask)
    weight = torch.randn(pattern.nnz, generator=g)

    sae_in = x - b_dec
    pre = dense_pre_acts(sae_in.detach(), W_enc.detach(), b_enc.detach())
    z = sparse_pre_acts(sae_in, W_enc, b_enc, pre, pattern)
    out = sparse_decode(z * weight, W_dec, b_dec, pattern)
    fast = _grads(out.pow(2).sum() + (z * weight).sum(), params)

    ref_z = (x - b_dec) @ W_enc + b_enc
    w_dense = torch.zeros(B, N).index_put((pattern.rows, pattern.cols), weight)
    ref_out = (ref_z * w_dense) @ W_dec + b_dec
    dense = _grads(ref_out.pow(2).sum() + (ref_z * w_dense).sum(), params)

    assert rel(out, ref_out) < 1e-5
    for a, b in zip(fast, dense, strict=True):
        assert rel(a, b) < 1e-5


def test_decoder_without_bias_and_dense_encoder_fallback():
    x, W_enc, b_enc, W_dec, _ = _weights(5)
    pre = dense_pre_acts(x, W_enc.detach(), b_enc.detach())
    z = dense_pre_acts_with_grad(x, W_enc, b_enc, pre)
    fast = _grads(z.relu().pow(2).sum(), [W_enc, b_enc])
    dense = _grads((x @ W_enc + b_enc).relu().pow(2).sum(), [W_enc, b_enc])
    for a, b in zip(fast, dense, strict=True):
        assert rel(a, b) < 1e-5

    idx = pre.topk(3, dim=-1).indices
    pattern = SparsePattern.from_topk(idx, N)
    values = torch.rand(pattern.nnz)
    dense_f = torch.zeros(B, N).index_put((pattern.rows, pattern.cols), values)
    assert (
        rel(sparse_decode(values, W_dec.detach(), None, pattern), dense_f @ W_dec.detach()) < 1e-6
    )


def test_dense_encoder_gives_b_dec_its_gradient_without_the_input_matmul():
    """sae_in = x − b_dec with x constant: ∂b_dec = −W_enc·Σ_t g equals autograd through x − b_dec."""
    x, W_enc, b_enc, _, b_dec = _weights(9)
    sae_in = (x - b_dec).detach()
    pre = dense_pre_acts(sae_in, W_enc.detach(), b_enc.detach())
    z = dense_pre_acts_with_grad(sae_in, W_enc, b_enc, pre, b_dec)
    fast = _grads(z.relu().pow(2).sum(), [W_enc, b_enc, b_dec])
    dense = _grads(((x - b_dec) @ W_enc + b_enc).relu().pow(2).sum(), [W_enc, b_enc, b_dec])
    for a, b in zip(fast, dense, strict=True):
        assert rel(a, b) < 1e-5


def test_batch_level_pattern_and_transpose_are_consistent():
    g = torch.Generator().manual_seed(6)
    flat = torch.randperm(B * N, generator=g)[: B * 3]
    pattern = SparsePattern.from_flat(flat, (B, N))
    values = torch.randn(pattern.nnz, generator=g)
    dense = torch.zeros(B * N, dtype=torch.bool)
    dense[flat] = True
    assert torch.equal(dense.view(B, N), pattern.csr(values).to_dense() != 0)
    table = torch.randn(B, D, generator=g)
    assert torch.allclose(
        pattern.bag_sum_t(table, values), pattern.csr(values).to_dense().T @ table, atol=1e-5
    )


def test_bf16_matmul_within_tolerance():
    x, W_enc, b_enc, _, _ = _weights(7)
    ref = dense_pre_acts(x, W_enc.detach(), b_enc.detach())
    low = dense_pre_acts(x, W_enc.detach(), b_enc.detach(), torch.bfloat16)
    assert 0 < rel(low, ref) < 1e-2


def test_jumprelu_window_covers_the_gradient_support_with_only_zero_extras():
    g = torch.Generator().manual_seed(8)
    theta = torch.rand(N, generator=g) + 0.5
    eps = 0.3
    # Random entries plus entries one ulp either side of the window's lower edge θ − ε/2.
    edge = theta - eps / 2
    pre = torch.cat(
        [
            torch.randn(B, N, generator=g),
            torch.nextafter(edge, edge + 1).expand(2, N),
            torch.nextafter(edge, edge - 1).expand(2, N),
        ]
    )
    window = jumprelu_window(pre, theta, eps)
    active = pre > theta
    in_kernel = ((pre - theta) / eps).abs() < 0.5
    support = active | in_kernel
    assert torch.equal(window & support, support)
    extra = window & ~support
    below = (theta.expand_as(pre) - pre)[extra]
    assert extra.any() and bool((below <= 0.55 * eps + 1e-6).all())
    # Nothing far below the edge is kept: the window is as sparse as the kernel allows.
    assert not (window & (pre < theta - 0.56 * eps)).any()


def test_jumprelu_window_keeps_the_edge_when_theta_dwarfs_the_bandwidth():
    theta = torch.full((N,), 1000.0)
    eps = 1e-4
    edge = theta - eps / 2
    pre = torch.stack([torch.nextafter(edge, edge + 1), edge, torch.nextafter(edge, edge - 1)])
    in_kernel = ((pre - theta) / eps).abs() < 0.5
    window = jumprelu_window(pre, theta, eps)
    assert torch.equal(window & in_kernel, in_kernel)


def test_options_validate_and_choose():
    with pytest.raises(ValueError, match="kernel mode"):
        KernelOptions(mode="fast")
    with pytest.raises(ValueError, match="decide_every"):
        KernelOptions(decide_every=0)
    assert not KernelOptions(mode="dense").sparse_at(0.0)
    assert KernelOptions(mode="sparse").sparse_at(1.0)
    auto = KernelOptions(mode="auto", max_density=0.05)
    assert auto.sparse_at(0.01) and not auto.sparse_at(0.2)
    assert auto.steps_per_decision(torch.device("cpu")) == 1
    assert auto.steps_per_decision(torch.device("meta")) == 16


def _mask(density: float) -> torch.Tensor:
    return torch.arange(1000).reshape(10, 100) < density * 1000


def test_auto_decides_every_n_steps_from_the_summed_density():
    """Between read-backs the last decision holds; the next uses the mean density since then."""
    workspace, options = Workspace(), KernelOptions(max_density=0.05, decide_every=3)
    densities = [0.01, 0.2, 0.2, 0.01, 0.01, 0.01, 0.02]
    chosen = [workspace.use_sparse(_mask(d), options) for d in densities]
    # step 1 decides alone (0.01 → sparse); steps 2–4 average 0.137 → dense from step 4;
    # steps 5–7 average 0.013 → sparse again at step 7.
    assert chosen == [True, True, True, False, False, False, True]
    # Every step on CPU by default, and never for a fixed mode.
    assert [Workspace().use_sparse(_mask(d), KernelOptions()) for d in (0.01, 0.2)] == [True, False]
    assert Workspace().use_sparse(_mask(0.0), KernelOptions(mode="dense")) is False


def test_workspace_buffers_are_reused_until_released_and_never_copied():
    import copy

    ws = Workspace()
    a = ws.buffer("pre", (4, 8), torch.float32, torch.device("cpu"))
    assert ws.buffer("pre", (4, 8), torch.float32, torch.device("cpu")) is a
    assert ws.buffer("pre", (4, 9), torch.float32, torch.device("cpu")) is not a
    b = ws.buffer("pre", (4, 9), torch.float32, torch.device("cpu"))
    ws.release("pre")
    assert ws.buffer("pre", (4, 9), torch.float32, torch.device("cpu")) is not b
    assert copy.deepcopy(ws)._buffers == {}


@pytest.mark.parametrize("density", [0.0, 0.003, 0.1, 0.6, 1.0])
@pytest.mark.parametrize("shape", [(64, 512), (7, 13), (33, 96)])
def test_flat_nonzero_equals_torch_nonzero(density, shape):
    """The word-at-a-time scan finds exactly torch.nonzero's entries, in the same order."""
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(shape, generator=g) < density
    ref = mask.reshape(-1).nonzero().squeeze(1)
    assert torch.equal(flat_nonzero(mask), ref)
    big = torch.rand(shape[0] + 1, shape[1], generator=g) < density
    assert torch.equal(flat_nonzero(big[1:]), big[1:].reshape(-1).nonzero().squeeze(1))


@pytest.mark.parametrize("block", [1, 7, 1024])
def test_blocked_transpose_is_the_transpose(block):
    m = torch.randn(45, 13)
    out = _transposed(m, block)
    assert out.is_contiguous() and torch.equal(out, m.T)


@pytest.mark.parametrize("crowded", [{}, {5: 10.0}, {5: 3.0, 17: 2.0, 40: 2.5}])
def test_largest_entries_equal_one_topk_over_the_batch(crowded):
    """Row candidates first, and the whole row of each row that holds more than its candidates'
    share of the largest entries (high-norm tokens): the same entries as one whole-batch top-k."""
    from saelab.kernels.codes import largest_entries

    g = torch.Generator().manual_seed(11)
    scores = torch.randn(64, 500, generator=g)
    for row, shift in crowded.items():
        scores[row] += shift  # e.g. row 5 + 10 alone holds the 200 largest, more than 4·k = 8
    values, flat = largest_entries(scores, 200, k=2)
    ref_values, ref_flat = scores.reshape(-1).topk(200)
    assert torch.equal(flat.sort().values, ref_flat.sort().values)
    assert torch.equal(values.sort().values, ref_values.sort().values)
    assert torch.equal(scores.reshape(-1)[flat], values)
