"""Resampling revives a dead latent completely: every per-latent parameter, its Adam moments
and its dead-tracker count (SPEC §2.1 resampling, issue 15)."""

import pytest
import torch

import saelab
from saelab.train.dead import DeadLatentTracker
from saelab.train.resample import resample_dead_latents

D_IN, D_SAE = 8, 24
DEAD = [2, 5, 11]


def _trained_with_adam(arch: str, **options) -> tuple[saelab.SAE, torch.optim.Adam, torch.Tensor]:
    """An SAE after a few Adam steps, every parameter and every moment entry non-zero."""
    sae = saelab.create_sae(arch, D_IN, D_SAE, seed=0, **options)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.uniform_(0.05, 0.3, generator=g)
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    x = torch.randn(64, D_IN, generator=g)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        sae.training_loss(x, 0.1)[0].backward()
        opt.step()
    for state in opt.state.values():  # a latent without gradient yet would have zero moments
        for key in ("exp_avg", "exp_avg_sq"):
            state[key].uniform_(0.1, 1.0, generator=g)
    return sae, opt, x


def _per_latent(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t with the latent dim first and everything else flattened: (d_sae, -1)."""
    return t.movedim(dim, 0).reshape(D_SAE, -1)


@pytest.mark.parametrize(
    ("arch", "options", "expected"),
    [
        ("jumprelu", {}, {"W_enc", "b_enc", "W_dec", "threshold"}),
        ("gated", {"gated_variant": "unit-norm"}, {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec"}),
        ("gated", {"gated_variant": "ri-l1"}, {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec"}),
    ],
)
def test_resampling_resets_every_latent_parameter_moment_and_count(arch, options, expected):
    sae, opt, x = _trained_with_adam(arch, **options)
    names = {id(p): n for n, p in sae.named_parameters()}
    assert {names[id(p)] for p, _ in sae.latent_parameters()} == expected
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[DEAD] = True
    tracker = DeadLatentTracker(D_SAE, window=100)
    tracker.update(~dead, 200)
    assert torch.equal(tracker.dead_mask, dead)
    params = {names[id(p)]: p.detach().clone() for p, _ in sae.latent_parameters()}
    moments = {
        names[id(p)]: {k: opt.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")}
        for p, _ in sae.latent_parameters()
    }

    revived = resample_dead_latents(sae, x, tracker.dead_mask, opt)
    tracker.reset(revived)

    assert revived.dtype == torch.long and revived.tolist() == DEAD
    assert not tracker.dead_mask.any() and (tracker.tokens_since_fired[~dead] == 0).all()
    for param, dim in sae.latent_parameters():
        name = names[id(param)]
        changed = (_per_latent(param.detach(), dim) != _per_latent(params[name], dim)).any(1)
        assert torch.equal(changed, dead), name  # revived latents changed, the others did not
        for key, old in moments[name].items():
            new = _per_latent(opt.state[param][key], dim)
            assert (new[dead] == 0).all(), f"{name} {key}"
            assert torch.equal(new[~dead], _per_latent(old, dim)[~dead]), f"{name} {key}"


def test_revived_jumprelu_threshold_matches_alive_latents_relative_to_encoder_norm():
    sae, opt, x = _trained_with_adam("jumprelu")
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[DEAD] = True
    ratio = (sae.threshold / sae.W_enc.norm(dim=0)).detach()
    revived = resample_dead_latents(sae, x, dead, opt)
    new_ratio = (sae.threshold / sae.W_enc.norm(dim=0)).detach()
    torch.testing.assert_close(new_ratio[revived], ratio[~dead].median().expand(len(DEAD)))
    assert (sae.b_enc[revived] == 0).all() and (sae.threshold[revived] > 0).all()


def test_gated_revived_latents_keep_unit_norm_and_alive_magnitude_scale():
    sae, opt, x = _trained_with_adam("gated", gated_variant="unit-norm")
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[DEAD] = True
    r_mag = sae.r_mag.detach().clone()
    revived = resample_dead_latents(sae, x, dead, opt)
    torch.testing.assert_close(sae.W_dec[revived].norm(dim=1), torch.ones(len(DEAD)))
    assert (sae.r_mag[revived] == r_mag[~dead].median()).all()
    assert (sae.b_mag[revived] == 0).all()


def test_nothing_dead_returns_no_indices():
    sae, opt, x = _trained_with_adam("relu")
    revived = resample_dead_latents(sae, x, torch.zeros(D_SAE, dtype=torch.bool), opt)
    assert revived.dtype == torch.long and revived.numel() == 0
