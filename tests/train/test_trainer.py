"""The training loop: normalisation folding, determinism, schedules, constraints, data sources."""

import math

import pytest
import torch

import saelab
from saelab.train import normalization_constant
from saelab.train.dead import DeadLatentTracker
from saelab.train.resample import resample_dead_latents
from saelab.train.schedules import LRSchedule, SparsitySchedule

ARCHS = ["relu", "topk", "batchtopk", "gated", "jumprelu"]


def _perturbed(arch):
    sae = saelab.create_sae(arch, 8, 24, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name != "threshold":
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        if arch == "jumprelu":
            sae.threshold.uniform_(0.05, 0.3, generator=g)
    if arch == "batchtopk":
        sae.train_forward(torch.randn(32, 8, generator=g), 0.0)
    return sae


@pytest.mark.parametrize("arch", ARCHS)
def test_folding_c_gives_c_times_features_and_reconstruction(arch, tmp_path):
    """SPEC §1: after folding, f'(x) = C·f(x/C) and x̂'(x) = C·x̂(x/C), also after save/load."""
    sae = _perturbed(arch)
    c = 7.5
    x = 3.0 * torch.randn(200, 8) + 1.0
    f_train, x_hat_train = sae.encode(x / c).detach(), sae(x / c).detach()
    sae.fold_normalization(c)
    assert not sae.cfg.apply_b_dec_to_input and sae.cfg.normalization_constant == c
    torch.testing.assert_close(sae.encode(x), c * f_train, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), c * x_hat_train, rtol=1e-5, atol=1e-5)
    sae.save(tmp_path / "sae")
    loaded = saelab.load_sae(tmp_path / "sae")
    torch.testing.assert_close(loaded.encode(x), c * f_train, rtol=1e-5, atol=1e-5)
    assert loaded.cfg.normalization_constant == pytest.approx(c)


def test_train_estimates_c_and_returns_sae_on_raw_activations():
    x = 40.0 * torch.randn(4096, 8) + 5.0
    c = normalization_constant(x)
    assert c == pytest.approx(float(x.pow(2).sum(1).mean().sqrt()), rel=1e-6)
    sae = saelab.create_sae("topk", 8, 32, k=4, seed=0)
    saelab.train(sae, x, saelab.TrainConfig(total_tokens=2048, batch_size=256, lr=1e-3))
    assert sae.cfg.normalization_constant == pytest.approx(c, rel=1e-6)
    assert saelab.evaluate(sae, x)["fvu"] < 1.5  # works on raw, unnormalised inputs


@pytest.mark.parametrize("arch", ARCHS)
def test_training_is_deterministic_under_a_seed(arch):
    x = torch.randn(3000, 8)
    cfg = saelab.TrainConfig(total_tokens=2000, batch_size=100, lr=1e-3, seed=3, log_every=7)
    results = []
    for _ in range(2):
        sae = saelab.create_sae(arch, 8, 32, seed=0)
        history = saelab.train(sae, x, cfg)
        results.append((sae.state_dict(), history))
    (a, ha), (b, hb) = results
    assert ha == hb and len(ha) == 20
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert {"loss", "mse_loss", "l0", "fvu", "dead_fraction", "lr"} <= set(ha[-1])


def test_lr_scales_multiply_the_lr_of_the_named_parameters():
    x = torch.randn(3000, 8) + 3.0
    base = dict(total_tokens=2000, batch_size=100, lr=1e-3, seed=3, normalize=False)
    trained = {}
    explicit = {"b_dec": 1.0, "b_enc": 0.1}  # the budget rule for a zero-initialised b_dec
    for label, scales in (("none", None), ("rule", explicit), ("frozen", {"b_dec": 0.0})):
        sae = saelab.create_sae("topk", 8, 32, k=4, seed=0, b_dec_init="zeros")
        saelab.train(sae, x, saelab.TrainConfig(**base, lr_scales=scales))
        trained[label] = sae.state_dict()
    for name, value in trained["none"].items():
        assert torch.equal(value, trained["rule"][name]), name
    assert torch.equal(trained["frozen"]["b_dec"], torch.zeros(8))
    assert trained["none"]["b_dec"].abs().min() > 0
    with pytest.raises(ValueError, match=r"lr_scales names \['bias'\].*valid: \['W_dec'"):
        saelab.train(
            saelab.create_sae("topk", 8, 32, k=4),
            x,
            saelab.TrainConfig(**base, lr_scales={"bias": 0.5}),
        )
    with pytest.raises(ValueError, match="lr_scales"):
        saelab.TrainConfig(lr_scales={"b_dec": -1.0})


def test_unit_norm_decoder_kept_and_parallel_gradient_removed():
    sae = saelab.create_sae("jumprelu", 8, 16, seed=0)
    sae.W_dec.grad = torch.randn(16, 8)
    sae.remove_parallel_gradient()
    torch.testing.assert_close(
        (sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(16), atol=1e-6, rtol=0
    )
    saelab.train(
        sae, torch.randn(1000, 8), saelab.TrainConfig(total_tokens=1000, batch_size=100, lr=1e-2)
    )
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(16))


def test_iterables_are_rebatched_and_lockstep_saes_see_the_same_batches():
    x = torch.randn(1000, 8)
    chunks = list(x.split(33))
    cfg = saelab.TrainConfig(total_tokens=900, batch_size=64, lr=1e-3, normalize=False)
    a, b = (saelab.create_sae("relu", 8, 16, seed=0) for _ in range(2))
    histories = saelab.train([a, b], chunks, cfg)
    assert len(histories) == 2 and histories[0] == histories[1]
    one_shot = iter(x[:100].split(50))
    with pytest.raises(ValueError, match="ran out after"):
        saelab.train(saelab.create_sae("relu", 8, 16), one_shot, cfg)
    with pytest.raises(ValueError, match="d_in=8 but the data has d_in=5"):
        saelab.train(saelab.create_sae("relu", 8, 16), torch.randn(10, 5), cfg)


def test_schedules():
    lr = LRSchedule(
        lr=1.0, total_steps=100, warmup_steps=10, warmup="cosine", start=0.1, decay_steps=20
    )
    assert lr(0) == pytest.approx(0.1)
    assert lr(5) == pytest.approx(0.1 + 0.9 * (1 - math.cos(math.pi / 2)) / 2)
    assert lr(10) == lr(79) == 1.0
    assert lr(90) == pytest.approx(0.5) and lr(99) == pytest.approx(0.05)
    lin = LRSchedule(lr=2.0, total_steps=10, warmup_steps=4, warmup="linear", start=0.0)
    assert lin(2) == pytest.approx(1.0)
    lam = SparsitySchedule(4.0, warmup_steps=8)
    assert lam(0) == 0 and lam(2) == pytest.approx(1.0) and lam(8) == lam(1000) == 4.0
    with pytest.raises(ValueError, match="lr_warmup='exp'"):
        saelab.TrainConfig(lr_warmup="exp")


def test_dead_latent_tracking_by_token_window():
    tracker = DeadLatentTracker(4, window=300)
    fired = torch.tensor([True, False, False, False])
    for _ in range(3):
        tracker.update(fired, 100)
    assert tracker.dead_mask.tolist() == [False, True, True, True]
    tracker.update(torch.tensor([True, False, True, False]), 100)
    assert tracker.dead_mask.tolist() == [False, True, False, True]


def test_any_dead_is_read_every_n_updates_and_held_across_a_resume():
    """Off the CPU the flag is read back every check_every steps; a resumed tracker holds the
    same flag as the uninterrupted one, so the dead-latent losses switch on at the same step."""
    tracker = DeadLatentTracker(2, window=150, check_every=3)
    flags = []
    for _ in range(6):
        flags.append(tracker.any_dead())
        tracker.update(torch.tensor([True, False]), 100)
        if tracker.updates == 4:
            resumed = DeadLatentTracker(2, window=150, check_every=3)
            resumed.load_state_dict(tracker.state_dict())
    # dead from update 2 on; read at updates 0 and 3 (held in between), then at 6.
    assert flags == [False, False, False, True, True, True]
    assert resumed.any_dead() is True and resumed.updates == 4
    assert DeadLatentTracker(2, window=1).check_every == 1  # CPU: every step


def test_resampling_points_dead_latents_at_high_loss_inputs():
    sae = saelab.create_sae("relu", 8, 16, seed=0, unit_norm_decoder=True)
    x = torch.randn(64, 8)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[3, 7]] = True
    opt = torch.optim.Adam(sae.parameters())
    sae(x).sum().backward()
    opt.step()
    revived = resample_dead_latents(sae, x, dead, opt)
    assert revived.tolist() == [3, 7]
    torch.testing.assert_close(sae.W_dec[dead].norm(dim=1), torch.ones(2))
    assert (sae.b_enc[dead] == 0).all()
    assert (opt.state[sae.W_dec]["exp_avg"][dead] == 0).all()
    directions = (x - sae.b_dec) / (x - sae.b_dec).norm(dim=1, keepdim=True)
    cos = sae.W_dec[dead] @ directions.T
    assert (cos.max(dim=1).values > 0.999).all()  # each new row is one of the inputs


@pytest.mark.parametrize(("log_every", "refreshed_at"), [(50, [500]), (2, [200, 400, 500])])
def test_progress_counts_every_step_and_finishes_at_the_total(log_every, refreshed_at, monkeypatch):
    from saelab.train.progress import TrainProgress

    calls = []
    monkeypatch.setattr(
        TrainProgress, "update", lambda self, tokens, latest=None: calls.append((tokens, latest))
    )
    cfg = saelab.TrainConfig(total_tokens=500, batch_size=100, lr=1e-3, log_every=log_every)
    history = saelab.train(saelab.create_sae("relu", 8, 16), torch.randn(500, 8), cfg)
    assert [tokens for tokens, _ in calls] == [100, 200, 300, 400, 500, 500]
    assert [tokens for tokens, latest in calls if latest is not None] == refreshed_at
    assert calls[-1][1] == [history[-1]]  # the last update shows the final metrics


def test_rounded_budget_and_cycled_tensor_warn_with_the_numbers():
    cfg = saelab.TrainConfig(total_tokens=1000, batch_size=128, lr=1e-3)
    with pytest.warns(UserWarning) as record:
        saelab.train(saelab.create_sae("relu", 8, 16), torch.randn(300, 8), cfg)
    assert [str(w.message) for w in record] == [
        "total_tokens 1,000 is not a multiple of batch_size 128; training 896 tokens (7 steps)",
        "the activation tensor holds 300 tokens but the run trains on 896; "
        "the data will be cycled (3.0 epochs)",
    ]
    assert record[0].filename == __file__  # points at the caller's train() line
    tiny = saelab.TrainConfig(total_tokens=50, batch_size=128, lr=1e-3)
    with pytest.warns(
        UserWarning,
        match=r"^total_tokens 50 is not a multiple of batch_size 128; "
        r"training 128 tokens \(1 step\)$",
    ):
        saelab.train(saelab.create_sae("relu", 8, 16), torch.randn(300, 8), tiny)


@pytest.mark.parametrize("native", [True, False])
def test_matmul_dtype_auto_is_bf16_only_where_the_cpu_multiplies_it(native, monkeypatch):
    """TrainConfig.matmul_dtype reaches the SAE's kernels: "auto" → bf16 on a CPU with
    AVX512-BF16/AMX, else the SAE's own setting; float32 and bfloat16 as named."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    x = torch.randn(512, 8)
    expected = {"auto": torch.bfloat16 if native else None, "float32": None}
    expected["bfloat16"] = torch.bfloat16
    for name, dtype in expected.items():
        sae = saelab.create_sae("jumprelu", 8, 32, seed=0)
        saelab.train(
            sae, x, saelab.TrainConfig(total_tokens=256, batch_size=128, matmul_dtype=name)
        )
        assert sae.kernels.matmul_dtype == dtype, name


def test_matmul_dtype_is_checked():
    with pytest.raises(ValueError, match=r"matmul_dtype.*'auto', 'float32', 'bfloat16', 'float16'"):
        saelab.TrainConfig(matmul_dtype="float64")
