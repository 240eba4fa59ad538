"""Data parallelism (saelab.train.distributed): 2-process gloo equals one process on the whole batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import saelab
from saelab.cli import app
from saelab.kernels import KernelOptions
from saelab.kernels.codes import batch_topk_select
from saelab.train.distributed import average_gradients

HOOK = "blocks.1.hook_resid_post"
ARCHS = ["relu", "jumprelu", "gated", "topk", "batchtopk"]
MEMBERS = ["relu-lam0.01", "jumprelu-lam0.01", "gated-lam0.01", "topk-k4", "batchtopk-k4"]
D, N, K, B = 16, 64, 4, 64
EPS32 = torch.finfo(torch.float32).eps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batchtopk_sae() -> saelab.SAE:
    torch.manual_seed(0)
    sae = saelab.create_sae("batchtopk", D, N, k=K)
    sae.reset_parameters()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05)
    return sae


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(N, dtype=torch.bool)
    dead[::3] = True
    return x, dead


# Entries tied at the cut: the k·B_g + 1 = 5th largest of 4 tokens × 4 latents (k = 1) is 0.5,
# held by three entries on both halves of the batch; only the three above it are selected.
TIES = torch.tensor(
    [[0.9, 0.5, 0.1, 0.0], [0.2, 0.8, 0.5, 0.1], [0.5, 0.0, 0.3, 0.7], [0.1, 0.2, 0.0, 0.3]]
)


def _step(sae: saelab.SAE, x: torch.Tensor, dead: torch.Tensor, mode: str) -> dict:
    """One training forward and backward with gradients averaged over ranks."""
    sae.zero_grad(set_to_none=True)
    sae.kernels = KernelOptions(mode=mode)
    out = sae.train_forward(x, 0.0, dead)
    out.loss.backward()
    average_gradients(sae.parameters())
    return {
        "f": out.feature_acts.detach(),
        "aux_loss": out.terms["aux_loss"].detach(),
        "threshold": sae.threshold.clone(),
        "grads": {n: p.grad.clone() for n, p in sae.named_parameters()},
    }


def _selection(scores: torch.Tensor, k: int, across_ranks: bool) -> dict:
    idx, cut, smallest = batch_topk_select(scores, k, across_ranks)
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    chosen[idx[scores.reshape(-1)[idx] > cut]] = True
    return {"chosen": chosen.reshape(scores.shape), "smallest": smallest.float()}


def _results(x: torch.Tensor, dead: torch.Tensor, ties: torch.Tensor, across: bool) -> dict:
    return {
        "dense": _step(_batchtopk_sae(), x, dead, "dense"),
        "sparse": _step(_batchtopk_sae(), x, dead, "sparse"),
        "ties": _selection(ties, 1, across),
        "all": _selection(ties, 4, across),
    }


def _rank_worker(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        x, dead = _inputs()
        shard = slice(rank * B // 2, (rank + 1) * B // 2)
        ties = TIES[rank * 2 : rank * 2 + 2]
        torch.save(_results(x[shard], dead, ties, True), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_batchtopk_and_auxk_use_the_global_batch_on_every_rank(tmp_path):
    mp.spawn(_rank_worker, args=(f"tcp://127.0.0.1:{_free_port()}", str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x, dead = _inputs()
    single = _results(x, dead, TIES, False)
    # Tokens × latents reductions of length B: rounding of order B·eps32 relative.
    tol = {"rtol": B * EPS32, "atol": B * EPS32}
    for mode in ("dense", "sparse"):
        one, two = single[mode], [r[mode] for r in ranks]
        f = torch.cat([r["f"] for r in two])
        # The k·B_global largest entries of the global batch (not k·B_local per rank).
        assert int((f != 0).sum()) == K * B
        assert torch.equal(f != 0, one["f"] != 0), mode
        torch.testing.assert_close(f, one["f"], **tol)
        # One θ, bitwise the same on both ranks, and that of the single process.
        assert torch.equal(two[0]["threshold"], two[1]["threshold"]), mode
        torch.testing.assert_close(two[0]["threshold"], one["threshold"], **tol)
        assert one["threshold"] == one["f"][one["f"] > 0].min()
        # AuxK over the global batch: the ranks' mean loss and averaged gradients are the
        # single process's (a per-rank ‖e − mean(e)‖² would give neither).
        torch.testing.assert_close((two[0]["aux_loss"] + two[1]["aux_loss"]) / 2, one["aux_loss"])
        assert float(one["aux_loss"]) > 0
        for name, g in one["grads"].items():
            torch.testing.assert_close(two[0]["grads"][name], g, **tol, msg=f"{mode} {name}")
            assert torch.equal(two[0]["grads"][name], two[1]["grads"][name]), name
    expected = torch.zeros_like(TIES, dtype=torch.bool)
    expected[0, 0] = expected[1, 1] = expected[2, 3] = True
    for result in (single["ties"], {"chosen": torch.cat([r["ties"]["chosen"] for r in ranks])}):
        assert torch.equal(result["chosen"], expected)
    for r in ranks:
        assert float(r["ties"]["smallest"]) == pytest.approx(0.7)
        # k = n keeps every entry; smallest is the global batch's smallest positive entry.
        assert bool(r["all"]["chosen"].all()) and float(r["all"]["smallest"]) == pytest.approx(0.1)
    assert float(single["ties"]["smallest"]) == pytest.approx(0.7)


@pytest.fixture(scope="module")
def cache(tiny_model, text_corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    result = CliRunner().invoke(app, [
        "cache", "--model", str(tiny_model("llama")), "--hook", HOOK, "--corpus",
        str(text_corpus_dir), "--tokens", "6000", "--context-size", "32", "--shard-tokens", "2048",
        "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_two_process_gloo_ddp_equals_one_process_for_every_architecture(cache, tmp_path):
    steps, batch, lr = 20, 256, 1e-3
    config = tmp_path / "run.yaml"
    # A one-batch dead window so AuxK runs on most steps (k·B = 1024 firings over 256 latents
    # leave some silent); dead latents resampled after steps 10 and 20.
    config.write_text(yaml.safe_dump({"train": {"dead_window": batch, "resample_every": 10}}))
    args = ["train", "--config", str(config), "--cache", str(cache), "--hook", HOOK,
            "--arch", ",".join(ARCHS), "--sparsity", "0.01", "--k", "4", "--width", "256",
            "--tokens", str(steps * batch), "--batch-size", str(batch), "--lr", str(lr),
            "--checkpoint-every", "1000", "--matmul-dtype", "float32"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    result = subprocess.run(
        [sys.executable, "-m", "saelab.cli", *args, "--out", str(single)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(_free_port()), "-m", "saelab.cli", *args, "--out", str(ddp)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data parallel over 2 processes" in result.stdout
    # float32 matmuls on any CPU (a bf16 product rounds differently at each rank's batch size).
    # Each step's gradients differ by fp32 reduction order: relative n·eps32 at most, with n =
    # batch·d_in terms in the widest reduction (the squared errors, AuxK's normaliser). Adam
    # moves a weight by about lr per step, so by lr·n·eps32 differently, summed over the steps;
    # the saved biases and θ are multiplied by the normalisation constant C (SPEC §1).
    for name in MEMBERS:
        rows = {
            run: [json.loads(line) for line in (run / name / "metrics.jsonl").open()]
            for run in (single, ddp)
        }
        dead = [[r["dead_fraction"] for r in rows[run]] for run in (single, ddp)]
        assert dead[0] == dead[1], name
        if name.startswith(("topk", "batchtopk")):
            assert sum("aux_loss" in r for r in rows[ddp]) >= steps // 2, name
        a = load_file(str(single / name / "sae" / "sae_weights.safetensors"))
        b = load_file(str(ddp / name / "sae" / "sae_weights.safetensors"))
        assert set(a) == set(b)
        if name.startswith("batchtopk"):
            assert "threshold" in a and float(a["threshold"].min()) > 0
        cfg = saelab.load_sae(single / name / "sae").cfg
        atol = steps * lr * batch * cfg.d_in * EPS32 * max(cfg.normalization_constant, 1.0)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0.0, atol=atol, msg=f"{name} {key}")
