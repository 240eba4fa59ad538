"""Every architecture: shapes, SPEC §2 forward and loss terms, initialisation, options."""

import pytest
import torch

import saelab
from saelab.sae import architectures

ARCHS = ["relu", "topk", "batchtopk", "gated", "jumprelu", "matryoshka", "matryoshka_jumprelu"]


def test_all_architectures_registered():
    assert sorted(ARCHS) == architectures()


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_parameters(arch):
    sae = saelab.create_sae(arch, 12, 40, seed=0)
    x = torch.randn(3, 5, 12)
    f = sae.encode(x)
    assert f.shape == (3, 5, 40) and (f >= 0).all()
    assert sae.decode(f).shape == sae(x).shape == (3, 5, 12)
    assert sae.W_enc.shape == (12, 40) and sae.W_dec.shape == (40, 12)
    assert sae.b_enc.shape == (40,) and sae.b_dec.shape == (12,)
    loss, terms = sae.training_loss(x.reshape(-1, 12), 0.1)
    assert loss.ndim == 0 and "mse_loss" in terms
    torch.testing.assert_close(loss, sum(terms.values()))


def test_seeded_init_is_reproducible_and_follows_spec():
    a = saelab.create_sae("jumprelu", 16, 64, seed=5)
    b = saelab.create_sae("jumprelu", 16, 64, seed=5)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(64))
    torch.testing.assert_close(a.W_enc, a.W_dec.T)
    # θ holds the paper's 0.001 until train() sets it from data (SPEC §2.0)
    assert (a.threshold == 0.001).all() and a.needs_data_init
    relu = saelab.create_sae("relu", 16, 64, seed=0)
    torch.testing.assert_close(relu.W_dec.norm(dim=1), torch.full((64,), 0.1))
    assert not relu.unit_norm_decoder and a.unit_norm_decoder


def test_topk_keeps_k_per_token_and_auxk_only_when_dead():
    sae = saelab.create_sae("topk", 8, 32, k=3, seed=0)
    x = torch.randn(50, 8)
    assert ((sae.encode(x) > 0).sum(-1) <= 3).all()
    _, terms = sae.training_loss(x, 0.0)
    assert "aux_loss" not in terms
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:10] = True
    _, terms = sae.training_loss(x, 0.0, dead)
    # AuxK by hand (SPEC §2.2): top k_aux dead pre-activations reconstruct the residual.
    pre = sae.pre_acts(x).detach()
    e = x - sae(x).detach()
    z = torch.zeros_like(pre)
    k_aux = min(sae.k_aux, 10)
    vals, idx = pre[:, :10].topk(k_aux, dim=-1)
    z.scatter_(-1, idx, vals.relu())
    e_hat = z @ sae.W_dec.detach()
    expected = ((e - e_hat) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    torch.testing.assert_close(terms["aux_loss"], expected / 32)


def test_batchtopk_selects_k_times_batch_and_learns_threshold():
    sae = saelab.create_sae("batchtopk", 8, 32, k=4, seed=0)
    x = torch.randn(20, 8)
    assert sae.threshold < 0
    out = sae.train_forward(x, 0.0)
    assert int((out.feature_acts > 0).sum()) == 4 * 20
    smallest = out.feature_acts[out.feature_acts > 0].min()
    torch.testing.assert_close(sae.threshold, smallest)
    pre = sae.pre_acts(x)
    torch.testing.assert_close(sae.encode(x), pre * (pre > smallest))


def test_gated_weight_sharing_and_losses():
    sae = saelab.create_sae("gated", 8, 16, seed=0)
    with torch.no_grad():
        sae.r_mag.normal_()
        sae.b_gate.normal_()
        sae.b_mag.normal_()
    x = torch.randn(30, 8)
    s = x - sae.b_dec
    gate = s @ sae.W_enc + sae.b_gate
    mag = s @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag
    torch.testing.assert_close(sae.encode(x), (gate > 0) * mag.relu())
    lam = 0.3
    _, terms = sae.training_loss(x, lam)
    norms = sae.W_dec.norm(dim=1)
    torch.testing.assert_close(terms["sparsity_loss"], lam * (gate.relu() * norms).sum(-1).mean())
    frozen = gate.relu() @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(terms["aux_loss"], ((x - frozen) ** 2).sum(-1).mean())
    # The aux term's decoder is frozen: it sends no gradient to W_dec.
    terms["aux_loss"].backward()
    assert sae.W_dec.grad is None or torch.count_nonzero(sae.W_dec.grad) == 0
    assert torch.count_nonzero(sae.W_enc.grad) > 0


def test_gated_equals_its_jumprelu_export():
    sae = saelab.create_sae("gated", 8, 16, seed=0, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.r_mag.normal_()
        sae.b_gate.normal_()
        sae.b_mag.normal_()
    j = saelab.create_sae("jumprelu", 8, 16, apply_b_dec_to_input=False)
    j.load_state_dict(sae.jumprelu_state())
    x = torch.randn(100, 8)
    torch.testing.assert_close(j.encode(x), sae.encode(x))


def test_relu_l1_is_weighted_by_decoder_norms():
    sae = saelab.create_sae("relu", 8, 16, seed=0)
    x = torch.randn(30, 8)
    _, terms = sae.training_loss(x, 2.0)
    f = sae.encode(x)
    torch.testing.assert_close(
        terms["sparsity_loss"], 2.0 * (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
    )


@pytest.mark.parametrize(
    ("arch", "options", "message"),
    [
        ("nope", {}, "unknown SAE architecture 'nope'"),
        ("topk", {"k": 0}, "invalid SAE option k=0"),
        ("topk", {"bandwidth": 0.1}, "does not take option(s) ['bandwidth']"),
        ("jumprelu", {"bandwidth": -1.0}, "invalid SAE option bandwidth=-1.0"),
        ("gated", {"gated_variant": "x"}, "gated_variant='x'"),
        ("matryoshka", {"group_sizes": [4, 4]}, "summing to d_sae=16"),
    ],
)
def test_bad_options_raise_clear_errors(arch, options, message):
    with pytest.raises(
        ValueError,
        match=message.replace("[", r"\[")
        .replace("(", r"\(")
        .replace(")", r"\)")
        .replace("]", r"\]"),
    ):
        saelab.create_sae(arch, 8, 16, **options)


def test_chunked_top_values_equal_one_topk_over_everything():
    from saelab.sae.common import top_values

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=g)
    w = torch.randn(7, 30, generator=g)
    full = (x @ w).reshape(-1).topk(123).values
    for chunk in (1, 8, 50):
        chunked = top_values(lambda part: part @ w, x, 123, chunk=chunk)
        torch.testing.assert_close(chunked.sort(descending=True).values, full, rtol=0, atol=1e-6)
