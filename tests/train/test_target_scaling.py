"""TrainConfig.target_scaling: a transcoder's target dimensions divided by σ_j^α in training,
the divisor folded into the decoder at the end (docs/RESULTS.md, "A transcoder of layer 6's
MLP")."""

import pytest
import torch
from typer.testing import CliRunner

import saelab
from saelab.cli import app
from saelab.train.checkpoint import read_checkpoint, save_checkpoint
from saelab.train.trainer import Lockstep, column_divisor, normalization_constant

D_IN, D_OUT, D_SAE = 12, 6, 32
# Per-dimension scales of y spanning 400×, like gemma's MLP outputs' few huge dimensions.
SCALES = torch.tensor([40.0, 1.0, 0.5, 0.1, 2.0, 0.3])


def _rows(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g) + 0.5
    mix = torch.randn(D_IN, D_OUT, generator=torch.Generator().manual_seed(7))
    return torch.cat([x, (x @ mix).relu() * SCALES + 1.0], 1)


def test_the_divisor_keeps_unit_energy_and_evens_out_dimensions_as_alpha_says():
    y = _rows(4_000, 0)[:, D_IN:].double()
    sigma = y.std(0)
    assert column_divisor(y, 0.0) == normalization_constant(y)
    for alpha in (0.5, 1.0):
        scaled = y / column_divisor(y, alpha).double()
        # E‖y/v‖² = 1 (SPEC §1) up to the fp32 rounding of v.
        assert float(scaled.pow(2).sum(1).mean()) == pytest.approx(1.0, rel=1e-6)
        # The spread of the dimensions' std shrinks from σ to σ^(1 − α).
        ratio = scaled.std(0) / scaled.std(0)[0]
        torch.testing.assert_close(ratio, (sigma / sigma[0]).pow(1 - alpha), rtol=1e-6, atol=0)


@pytest.mark.parametrize("skip", [False, True])
def test_the_folded_transcoder_maps_raw_x_to_the_divisor_times_what_it_learned(skip):
    rows, held = _rows(4_096, 1), _rows(256, 2)
    sae = saelab.create_sae("jumprelu", D_IN, D_SAE, d_out=D_OUT, seed=0, skip_connection=skip)
    config = saelab.TrainConfig(total_tokens=2_048, batch_size=256, target_scaling=1.0)
    run = Lockstep([sae], [config], rows, [(slice(0, D_IN), slice(D_IN, D_IN + D_OUT))])
    run.prepare()
    while run.step < run.total_steps:
        run.train_step()
    c_x, v = run.norms[f"0:{D_IN}"], run.norms[f"{D_IN}:{D_IN + D_OUT}^1"]
    assert v.shape == (D_OUT,)
    with torch.no_grad():
        learned = sae(held[:, :D_IN] / c_x)
        run.finish()
        raw = sae(held[:, :D_IN])
    # fp32: folding multiplies each weight by C_x, 1/C_x and v_j (a few ulps each).
    torch.testing.assert_close(raw, learned * v, rtol=1e-5, atol=1e-5 * float(raw.abs().max()))
    assert sae.cfg.metadata["target_scaling"] == 1.0


def test_scaling_the_target_gives_the_small_dimensions_their_share():
    """α = 1 fits the low-variance dimensions that α = 0 sacrifices to the 40× one."""
    rows, held = _rows(20_000, 3), _rows(2_000, 4)
    y = held[:, D_IN:]
    fvu = {}
    for alpha in (0.0, 1.0):
        sae = saelab.create_sae("topk", D_IN, D_SAE, d_out=D_OUT, k=3, seed=0)
        config = saelab.TrainConfig(total_tokens=19_968, batch_size=256, target_scaling=alpha)
        saelab.train(sae, rows, config)
        with torch.no_grad():
            err = (y - sae(held[:, :D_IN])).pow(2).sum(0) / (y - y.mean(0)).pow(2).sum(0)
        fvu[alpha] = err
    small = SCALES < 1
    # α = 0: the small dimensions do worse than their mean (FVU > 1); α = 1 fits every one.
    assert float(fvu[1.0][small].max()) < 0.5 < 1.0 < float(fvu[0.0][small].mean()), fvu


def test_target_scaling_is_checked():
    with pytest.raises(ValueError, match=r"target_scaling.*\[0, 2\]"):
        saelab.TrainConfig(total_tokens=1_000, target_scaling=-1.0)
    sae = saelab.create_sae("topk", D_IN, D_SAE, k=3)
    with pytest.raises(ValueError, match=r"target_scaling=0\.5 is for transcoders"):
        saelab.train(sae, torch.randn(512, D_IN), saelab.TrainConfig(512, target_scaling=0.5))


def test_the_cli_flag_needs_a_target_hook(tiny_model, tmp_path):
    args = ["train", "--model", str(tiny_model("llama")), "--hook", "blocks.0.hook_mlp_in"]
    result = CliRunner().invoke(app, [*args, "--target-scaling", "1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "target_scaling: weights a transcoder" in result.output
    assert not (tmp_path / "r").exists()


def _run(alpha: float | None, rows: torch.Tensor) -> Lockstep:
    sae = saelab.create_sae("topk", D_IN, D_SAE, d_out=D_OUT, k=3, seed=0)
    config = saelab.TrainConfig(total_tokens=2_048, batch_size=256, target_scaling=alpha)
    return Lockstep([sae], [config], rows, [(slice(0, D_IN), slice(D_IN, D_IN + D_OUT))])


def test_a_checkpoint_resumes_to_the_same_transcoder(tmp_path):
    """The per-dimension divisor travels in the checkpoint; an older checkpoint (one plain C_y,
    written before target scaling) continues with α = 0, as it started."""
    rows = _rows(4_096, 5)
    whole = _run(None, rows)
    whole.prepare()
    for _ in range(whole.total_steps):
        whole.train_step()
    whole.finish()
    first = _run(None, rows)
    first.prepare()
    for _ in range(3):
        first.train_step()
    state = read_checkpoint(save_checkpoint(tmp_path, 3, first.state_dict()))
    second = _run(None, rows)
    second.load_state_dict(state)
    while second.step < second.total_steps:
        second.train_step()
    second.finish()
    for name, value in whole.saes[0].state_dict().items():
        assert torch.equal(second.saes[0].state_dict()[name], value), name
    assert second.saes[0].cfg.metadata["target_scaling"] == 0.5
    old = _run(0.0, rows)
    old.prepare()
    resumed = _run(None, rows)
    resumed.load_state_dict(old.state_dict())
    assert resumed.alphas == [0.0] and resumed.saes[0].cfg.metadata["target_scaling"] == 0.0
