"""Budget defaults (issue 15): batch, LR, warm-ups, ε and the dead window follow the documented
rules (docs/jumprelu-training.md, "Budget defaults") from the run's tokens and width."""

import math

import pytest
import torch

import saelab
from saelab.train import SAETrainer
from saelab.train.config import (
    PAPER_RECIPES,
    PAPER_SAE_OPTIONS,
    TrainConfig,
    budget_batch_size,
    budget_lr,
)


@pytest.mark.parametrize(
    ("tokens", "batch"),
    [(50_000, 256), (100_000, 256), (500_000, 512), (1_000_000, 1024), (10_000_000, 4096)],
)
def test_batch_is_the_power_of_two_nearest_a_thousand_steps(tokens, batch):
    assert budget_batch_size(tokens) == batch
    assert TrainConfig(total_tokens=tokens).batch_size == batch
    assert TrainConfig(total_tokens=tokens, recipe="paper").batch_size == 4096
    assert TrainConfig(total_tokens=tokens, batch_size=100).batch_size == 100


def test_lr_scales_with_root_batch_over_root_width():
    assert budget_lr(512, 4096) == pytest.approx(2e-3)
    assert budget_lr(2048, 4096) == pytest.approx(4e-3)
    assert budget_lr(512, 16384) == pytest.approx(1e-3)
    assert budget_lr(4096, 64) == 1e-2  # capped


def test_trainer_schedules_follow_the_run():
    sae = saelab.create_sae("jumprelu", 16, 256, seed=0)
    config = TrainConfig(total_tokens=1_000_000)
    trainer = SAETrainer(sae, config)
    steps = config.total_steps
    assert trainer.lr.lr == min(1e-2, 2e-3 * math.sqrt(1024 / 512) * math.sqrt(4096 / 256))
    assert trainer.lr.warmup_steps == int(0.05 * steps)
    assert trainer.lr.decay_steps == int(0.2 * steps)
    assert trainer.sparsity.coefficient == 1.0  # quadratic: unit-free λ (SPEC §2.4)
    assert trainer.tracker.window == int(0.05 * 1_000_000)
    paper = SAETrainer(saelab.create_sae("jumprelu", 16, 256), TrainConfig(recipe="paper"))
    assert paper.lr.lr == PAPER_RECIPES["jumprelu"].lr
    assert [g["lr_scale"] for g in paper.optimizer.param_groups] == [1.0]


@pytest.mark.parametrize(
    ("arch", "b_dec_init", "expected"),
    [
        ("topk", "geometric_median", {"b_dec": 0.0, "b_enc": 0.1}),
        ("jumprelu", "mean", {"b_dec": 0.0, "b_enc": 0.1, "threshold": 0.1}),
        ("gated", "geometric_median", {"b_dec": 0.0, "b_gate": 0.1, "b_mag": 0.1}),
        ("relu", "zeros", {"b_enc": 0.1}),
    ],
)
def test_offsets_train_slower_and_a_data_initialised_b_dec_stays(arch, b_dec_init, expected):
    """Budget rule: b_dec frozen where SPEC §2.0 set it from the data, encoder offsets at 0.1×
    the LR (docs/jumprelu-training.md, "Offsets"); explicit lr_scales replace the rule."""
    sae = saelab.create_sae(arch, 16, 64, seed=0, b_dec_init=b_dec_init)
    groups = SAETrainer(sae, TrainConfig(total_tokens=100_000)).optimizer.param_groups
    names = {id(p): n for n, p in sae.named_parameters()}
    scales = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scales == dict.fromkeys(names.values(), 1.0) | expected
    own = SAETrainer(sae, TrainConfig(total_tokens=100_000, lr_scales={"W_dec": 0.5}))
    assert sorted(g["lr_scale"] for g in own.optimizer.param_groups) == [0.5, 1.0]


def test_jumprelu_init_hits_the_target_l0_and_sets_epsilon_from_theta():
    """SPEC §2.0: θ₀ gives the target L0 on the sample, ε = 2·θ₀, and the reconstruction
    does not overshoot (the fitted encoder scale minimises ‖x − x̂‖ along x̂)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 32, generator=g) + 3.0
    sae = saelab.create_sae("jumprelu", 32, 512, seed=0, target_l0=20)
    sae.initialize_from_data(x)
    f = sae.encode(x)
    assert (f != 0).sum(-1).float().mean() == pytest.approx(20, rel=0.01)
    init = sae.cfg.metadata["init"]
    assert sae.cfg.bandwidth == pytest.approx(2 * init["threshold"])
    x_hat = sae.decode(f)
    fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fvu <= 1.0
    paper = saelab.create_sae("jumprelu", 32, 512, seed=0, **PAPER_SAE_OPTIONS["jumprelu"])
    paper.initialize_from_data(x)
    assert (paper.threshold == 0.001).all() and paper.cfg.bandwidth == 0.001
    assert (paper.b_dec == 0).all() and torch.equal(paper.W_enc, paper.W_dec.T)
