"""JumpReLU: autograd gradients equal the SPEC §2.4 pseudo-derivatives, computed by hand."""

import pytest
import torch

import saelab
from saelab.kernels import KernelOptions


def _rect(u):
    return ((u > -0.5) & (u < 0.5)).double()


def _random_jumprelu(d_in, d_sae, bandwidth, seed, **options):
    g = torch.Generator().manual_seed(seed)
    options = {"max_frequency": 1.0} | options
    sae = saelab.create_sae(
        "jumprelu", d_in, d_sae, bandwidth=bandwidth, dtype="float64", **options
    )
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        sae.threshold.copy_(torch.rand(d_sae, generator=g, dtype=torch.float64) + 0.05)
    x = torch.randn(64, d_in, generator=g, dtype=torch.float64)
    return sae, x


def _spec_gradients(sae, x, lam, eps):
    """SPEC §2.4 by hand: ∂/∂z JumpReLU = H, ð/ðθ JumpReLU = −(θ/ε)K, ð/ðθ H = −(1/ε)K.

    The sparsity term is λ·L0 ("l0") or λ·(L0/T − 1)² ("quadratic"), so ∂loss/∂L0 is λ or
    2λ(L0/T − 1)/T, with L0 = Σ_tokens Σ_i H / B.
    """
    W_enc, b_enc, W_dec, b_dec, theta = (
        sae.W_enc.detach(),
        sae.b_enc.detach(),
        sae.W_dec.detach(),
        sae.b_dec.detach(),
        sae.threshold.detach(),
    )
    B = x.shape[0]
    s = x - b_dec
    pre = s @ W_enc + b_enc
    H = (pre > theta).double()
    f = pre * H
    x_hat = f @ W_dec + b_dec
    d_xhat = 2 * (x_hat - x) / B
    d_f = d_xhat @ W_dec.T
    d_pre = d_f * H
    K = _rect((pre - theta) / eps)
    if sae.cfg.sparsity_loss == "quadratic":
        target = sae.cfg.target_l0
        d_l0 = 2 * lam * (H.sum(-1).mean() / target - 1) / target
    else:
        d_l0 = lam
    return {
        "threshold": (d_f * -(theta / eps) * K).sum(0) + (d_l0 / B) * (-(1 / eps) * K).sum(0),
        "W_enc": s.T @ d_pre,
        "b_enc": d_pre.sum(0),
        "W_dec": f.T @ d_xhat,
        "b_dec": d_xhat.sum(0) - d_pre.sum(0) @ W_enc.T,
    }


@pytest.mark.parametrize("loss", [("l0", None), ("quadratic", 2.0)])
@pytest.mark.parametrize("eps", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_match_spec_formulas(eps, seed, loss):
    sparsity_loss, target = loss
    sae, x = _random_jumprelu(6, 10, eps, seed, sparsity_loss=sparsity_loss, target_l0=target)
    lam = 0.7
    loss, terms = sae.training_loss(x, lam)
    assert set(terms) == {"mse_loss", "sparsity_loss"}
    loss.backward()
    expected = _spec_gradients(sae, x, lam, eps)
    in_window = _rect((sae.pre_acts(x).detach() - sae.threshold.detach()) / eps).sum()
    assert in_window > 0, "test inputs must put some pre-activations inside the kernel window"
    for name, grad in expected.items():
        got = getattr(sae, name).grad
        torch.testing.assert_close(got, grad, rtol=1e-10, atol=1e-12, msg=name)


def test_l0_term_trains_only_the_threshold():
    sae, x = _random_jumprelu(6, 10, 0.5, 3)
    _, terms = sae.training_loss(x, 1.3)
    terms["sparsity_loss"].backward()
    for name in ("W_enc", "b_enc", "b_dec", "W_dec"):
        grad = getattr(sae, name).grad
        assert grad is None or torch.count_nonzero(grad) == 0, name
    assert torch.count_nonzero(sae.threshold.grad) > 0


def test_threshold_stays_fp32_and_positive_under_bf16():
    sae = saelab.create_sae("jumprelu", 8, 16, dtype="bfloat16")
    assert sae.threshold.dtype == torch.float32 and sae.W_enc.dtype == torch.bfloat16
    with torch.no_grad():
        sae.threshold.fill_(-1.0)
    sae.after_step()
    assert (sae.threshold > 0).all()


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_tanh_variant_and_dead_latent_terms(mode):
    """tanh λΣtanh(c·f‖d‖); on dead latents AuxK (SPEC §2.2) and the pre-act loss, the latter
    training θ alone (its π-gradient is dropped, see JumpReLUSAE.pre_act_loss)."""
    sae, x = _random_jumprelu(6, 10, 0.5, 4, sparsity_loss="tanh", pre_act_coefficient=0.1, aux_k=2)
    dead = torch.zeros(10, dtype=torch.bool)
    dead[:3] = True
    sae.kernels = KernelOptions(mode=mode)
    loss, terms = sae.training_loss(x, 0.5, dead)
    pre = sae.pre_acts(x).detach()
    norms = sae.W_dec.detach().norm(dim=1)
    f = pre * (pre > sae.threshold.detach())
    x_hat = f @ sae.W_dec.detach() + sae.b_dec.detach()
    tanh = 0.5 * torch.tanh(4.0 * 6**0.5 * f * norms).sum(-1).mean()
    gap = 0.1 * ((sae.threshold.detach() - pre).relu() * norms * dead).sum(-1).mean()
    e = x - x_hat
    z_aux = pre.masked_fill(~dead, float("-inf"))
    z_aux = torch.zeros_like(pre).scatter(1, z_aux.topk(2).indices, z_aux.topk(2).values).relu()
    aux = (e - z_aux @ sae.W_dec.detach()).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    torch.testing.assert_close(terms["sparsity_loss"], tanh)
    torch.testing.assert_close(terms["pre_act_loss"], gap)
    torch.testing.assert_close(terms["aux_loss"], aux / 32)
    torch.testing.assert_close(loss, terms["mse_loss"] + tanh + gap + aux / 32)
    terms["pre_act_loss"].backward()
    assert sae.W_enc.grad is None or torch.count_nonzero(sae.W_enc.grad) == 0
    assert torch.count_nonzero(sae.threshold.grad[:3]) > 0
    assert torch.count_nonzero(sae.threshold.grad[3:]) == 0


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_frequency_cap_raises_only_the_thresholds_of_too_frequent_latents(mode):
    """Σ_i ReLU(p_i − cap) with p_i = mean_t H(π_ti − θ_i): ð/ðθ_i = −(1/ε)ΣK/B above the cap."""
    sae, x = _random_jumprelu(6, 10, 0.5, 5, max_frequency=0.3)
    sae.kernels = KernelOptions(mode=mode)
    _, terms = sae.training_loss(x, 0.0)
    pre = sae.pre_acts(x).detach()
    theta = sae.threshold.detach()
    p = (pre > theta).double().mean(0)
    assert (p > 0.3).any() and (p <= 0.3).any()
    torch.testing.assert_close(terms["frequency_loss"], (p - 0.3).relu().sum())
    terms["frequency_loss"].backward()
    K = _rect((pre - theta) / 0.5)
    expected = torch.where(p > 0.3, -(1 / 0.5) * K.sum(0) / x.shape[0], 0.0)
    torch.testing.assert_close(sae.threshold.grad, expected)
