"""SAE-only training-step throughput: saelab vs SAELens, dictionary_learning and sparsify (issue 5).

Every library trains the same SAE (same init copied in, same random unit-norm inputs already in
memory) with its own native training step; steps alternate between libraries in one process
(warm-up, then the median of the timed steps). Each library is also run alone in a child
process from the same init for a fixed number of steps, to record its peak RSS and the loss and
reconstruction MSE it reaches, so speed is never bought with a different computation.

Libraries that are not importable in the running interpreter are skipped: run it once with the
project venv (saelab, SAELens) and once with .venv-bench (saelab, dictionary_learning, sparsify);
see benchmarks/RESULTS.md for the commands.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import importlib.util
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

import saelab
from saelab.kernels import KernelOptions
from saelab.train.config import TrainConfig
from saelab.train.trainer import SAETrainer

LIBRARIES = ("saelab", "saelens", "dictionary_learning", "sparsify")
MODULE_OF = {
    "saelab": "saelab",
    "saelens": "sae_lens",
    "dictionary_learning": "dictionary_learning",
    "sparsify": "sparsify",
}
LR = {"jumprelu": 7e-5, "topk": 2e-4}
BETAS = {"jumprelu": (0.0, 0.999), "topk": (0.9, 0.999)}


@dataclass
class Setup:
    """One benchmark configuration, shared by every library."""

    arch: str
    d_in: int
    d_sae: int
    batch: int
    k: int
    bandwidth: float
    l0_coefficient: float
    target_l0: int
    seed: int


# ---- shared init and data ---------------------------------------------------------------------
def make_batches(s: Setup, n: int) -> list[Tensor]:
    """n batches of random inputs with ‖x‖ = 1 per token (so E‖x‖² = 1, SPEC §1)."""
    g = torch.Generator().manual_seed(s.seed + 1)
    out = []
    for _ in range(n):
        x = torch.randn(s.batch, s.d_in, generator=g)
        out.append(x / x.norm(dim=1, keepdim=True))
    return out


def make_init(s: Setup, x: Tensor) -> dict[str, Tensor]:
    """saelab's initialisation; for JumpReLU θ is set so that L0 ≈ target_l0 at init."""
    torch.manual_seed(s.seed)
    sae = saelab.create_sae(s.arch, s.d_in, s.d_sae, **({"k": s.k} if s.arch == "topk" else {}))
    sae.reset_parameters()
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    if s.arch == "jumprelu":
        pre = (x[:256] @ state["W_enc"]).flatten()
        q = 1 - s.target_l0 / s.d_sae
        theta = pre.kthvalue(int(q * pre.numel())).values.item()
        state["threshold"] = torch.full((s.d_sae,), theta)
    return state


# ---- one adapter per library: build from the shared init, native training step, eval ---------
class Adapter(abc.ABC):
    """A library's SAE plus its native training step and a reconstruction MSE."""

    name: str

    @abc.abstractmethod
    def step(self, x: Tensor) -> float | Tensor:
        """One native training step on x; returns the loss."""

    @abc.abstractmethod
    def reconstruct(self, x: Tensor) -> Tensor:
        """The SAE's reconstruction of x."""

    @torch.no_grad()
    def mse(self, x: Tensor) -> float:
        return float((x - self.reconstruct(x)).pow(2).sum(-1).mean())


class SaelabAdapter(Adapter):
    """saelab's full SAETrainer.step (forward, backward, parallel-gradient removal, grad clip,
    Adam, unit-norm decoder, dead-latent tracking, metrics) with a kernel mode."""

    def __init__(self, s: Setup, init: dict[str, Tensor], variant: str) -> None:
        mode, *flags = variant.split("+")
        if unknown := set(flags) - {"bf16", "compile"}:
            raise ValueError(f"--saelab-variants: unknown flag(s) {unknown}; valid: bf16, compile")
        self.name = f"saelab[{variant}]"
        self.options = {
            "mode": mode,
            "matmul_dtype": torch.bfloat16 if "bf16" in flags else None,
        }
        self.sae = saelab.create_sae(
            s.arch,
            s.d_in,
            s.d_sae,
            **({"k": s.k} if s.arch == "topk" else {"bandwidth": s.bandwidth}),
        )
        self.sae.load_state_dict(init)
        self.sae.kernels = KernelOptions(**self.options)
        config = TrainConfig(
            total_tokens=10**12,
            batch_size=s.batch,
            lr=LR[s.arch],
            betas=BETAS[s.arch],
            sparsity_coefficient=s.l0_coefficient,
            lr_warmup_steps=0,
            sparsity_warmup_steps=0,
            lr_decay_fraction=0.0,
            dead_window=10**12,
            log_every=10**9,
        )
        self.trainer = SAETrainer(self.sae, config)
        if "compile" in flags:
            self.sae.train_forward = torch.compile(self.sae.train_forward)
        self.n = 0

    def step(self, x: Tensor) -> Tensor:
        self.trainer.step(x, self.n)
        self.n += 1
        return self.trainer._pending[-1]["loss"]

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.sae(x)


class SAELensAdapter(Adapter):
    """SAELens TrainingSAE: training_forward_pass, backward, Adam step."""

    name = "saelens"

    def __init__(self, s: Setup, init: dict[str, Tensor]) -> None:
        from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        self.TrainStepInput = TrainStepInput
        if s.arch == "jumprelu":
            cfg = JumpReLUTrainingSAEConfig(
                d_in=s.d_in,
                d_sae=s.d_sae,
                jumprelu_bandwidth=s.bandwidth,
                jumprelu_init_threshold=float(init["threshold"][0]),
                l0_coefficient=s.l0_coefficient,
            )
            self.sae = JumpReLUTrainingSAE(cfg)
            self.coefficients = {"l0": s.l0_coefficient}
        else:
            # rescale_acts_by_decoder_norm=False: the same computation as saelab's TopK.
            cfg = TopKTrainingSAEConfig(
                d_in=s.d_in, d_sae=s.d_sae, k=s.k, rescale_acts_by_decoder_norm=False
            )
            self.sae = TopKTrainingSAE(cfg)
            self.coefficients = {}
        self.sae.load_state_dict(init, strict=False)
        with torch.no_grad():
            for name, value in init.items():
                getattr(self.sae, name).copy_(value)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=LR[s.arch], betas=BETAS[s.arch])
        self.n = 0

    def step(self, x: Tensor) -> Tensor:
        out = self.sae.training_forward_pass(
            self.TrainStepInput(
                sae_in=x,
                coefficients=self.coefficients,
                dead_neuron_mask=None,
                n_training_steps=self.n,
                is_logging_step=False,
            )
        )
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.n += 1
        return out.loss.detach()

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.sae(x)


class DictionaryLearningAdapter(Adapter):
    """dictionary_learning's JumpReluTrainer / TopKTrainer .update (its native step)."""

    name = "dictionary_learning"

    def __init__(self, s: Setup, init: dict[str, Tensor]) -> None:
        from dictionary_learning.trainers.jumprelu import JumpReluTrainer
        from dictionary_learning.trainers.top_k import TopKTrainer

        common = {
            "steps": 10**6,
            "activation_dim": s.d_in,
            "dict_size": s.d_sae,
            "layer": 0,
            "lm_name": "benchmark",
            "lr": LR[s.arch],
            "warmup_steps": 1,
        }
        if s.arch == "jumprelu":
            self.trainer = JumpReluTrainer(
                **common,
                bandwidth=s.bandwidth,
                sparsity_penalty=s.l0_coefficient,
                sparsity_warmup_steps=None,
                target_l0=float(s.target_l0),
            )
            with torch.no_grad():
                for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
                    getattr(self.trainer.ae, name).copy_(init[name])
        else:
            self.trainer = TopKTrainer(**common, k=s.k)
            ae = self.trainer.ae
            with torch.no_grad():
                ae.encoder.weight.copy_(init["W_enc"].T)
                ae.encoder.bias.copy_(init["b_enc"])
                ae.decoder.weight.copy_(init["W_dec"].T)
                ae.b_dec.copy_(init["b_dec"])
        # Step 0 of TopKTrainer.update re-initialises b_dec from data; start at 1 for the same init.
        self.n = 1

    def step(self, x: Tensor) -> float:
        loss = self.trainer.update(self.n, x)
        self.n += 1
        return loss

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.trainer.ae(x)


class SparsifyAdapter(Adapter):
    """EleutherAI sparsify SparseCoder (TopK only): forward (FVU loss), backward, parallel-
    gradient removal, Adam step, unit-norm decoder — the steps of its Trainer."""

    name = "sparsify"

    def __init__(self, s: Setup, init: dict[str, Tensor]) -> None:
        from sparsify import SparseCoder, SparseCoderConfig

        self.sae = SparseCoder(s.d_in, SparseCoderConfig(num_latents=s.d_sae, k=s.k))
        with torch.no_grad():
            self.sae.encoder.weight.copy_(init["W_enc"].T)
            self.sae.encoder.bias.copy_(init["b_enc"])
            self.sae.W_dec.copy_(init["W_dec"])
            self.sae.b_dec.copy_(init["b_dec"])
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=LR[s.arch], betas=BETAS[s.arch])

    def step(self, x: Tensor) -> Tensor:
        out = self.sae(x, dead_mask=None)
        self.optimizer.zero_grad(set_to_none=True)
        out.fvu.backward()
        self.sae.remove_gradient_parallel_to_decoder_directions()
        self.optimizer.step()
        self.sae.set_decoder_norm_to_unit_norm()
        return out.fvu.detach()

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.sae(x).sae_out


def available(lib: str) -> bool:
    return importlib.util.find_spec(MODULE_OF[lib]) is not None


def build(lib: str, s: Setup, init: dict[str, Tensor]) -> Adapter:
    if lib.startswith("saelab"):
        return SaelabAdapter(s, init, lib.partition(":")[2] or "auto")
    if lib == "sparsify" and s.arch != "topk":
        raise ValueError("sparsify trains TopK only")
    return {
        "saelens": SAELensAdapter,
        "dictionary_learning": DictionaryLearningAdapter,
        "sparsify": SparsifyAdapter,
    }[lib](s, init)


# ---- measurements -----------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    out = fn()
    if isinstance(out, Tensor) and out.numel() == 1:
        out.item()
    return time.perf_counter() - start


def matmul_floor(s: Setup, dtype: torch.dtype, repeats: int) -> float:
    """Median seconds of one B×d_in×d_sae encoder matmul in dtype: the irreducible work."""
    x = torch.randn(s.batch, s.d_in).to(dtype)
    w = torch.randn(s.d_in, s.d_sae).to(dtype)
    x @ w
    return statistics.median(timed(lambda: x @ w) for _ in range(repeats))


def alternate(s: Setup, libs: list[str], warmup: int, steps: int) -> dict[str, list[float]]:
    """Build every library from the same init, then time their steps round-robin."""
    batches = make_batches(s, 4)
    init = make_init(s, batches[0])
    adapters = [build(lib, s, init) for lib in libs]
    times: dict[str, list[float]] = {a.name: [] for a in adapters}
    for i in range(warmup + steps):
        x = batches[i % len(batches)]
        for a in adapters:
            dt = timed(lambda a=a, x=x: a.step(x))
            if i >= warmup:
                times[a.name].append(dt)
            print(f"  {s.arch} step {i} {a.name}: {dt:.2f} s", file=sys.stderr, flush=True)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would include the parent's after fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_alone(s: Setup, lib: str, loss_steps: int) -> dict[str, Any]:
    """In a fresh process: build, train loss_steps steps, report losses, MSE and peak RSS."""
    batches = make_batches(s, 4)
    eval_x = make_batches(Setup(**{**asdict(s), "seed": s.seed + 100}), 1)[0]
    init = make_init(s, batches[0])
    rss_before = peak_rss_mb()
    adapter = build(lib, s, init)
    mse_init = adapter.mse(eval_x)
    losses = [float(adapter.step(batches[i % len(batches)])) for i in range(loss_steps)]
    return {
        "name": adapter.name,
        "mse_init": mse_init,
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "final_mse": adapter.mse(eval_x),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_build_mb": rss_before,
    }


def child(s: Setup, lib: str, loss_steps: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        lib,
        "--arch",
        s.arch,
        "--d-sae",
        str(s.d_sae),
        "--loss-steps",
        str(loss_steps),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("saelab", "sae-lens", "dictionary-learning", "eai-sparsify"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--arch",
        default="jumprelu,topk",
        help="comma-separated architectures to time (jumprelu, topk)",
    )
    p.add_argument("--d-in", type=int, default=640, help="input width d_in")
    p.add_argument(
        "--d-sae", type=int, default=16384, help="dictionary width d_sae (65536 for the wide case)"
    )
    p.add_argument("--batch", type=int, default=4096, help="tokens per training step")
    p.add_argument("--k", type=int, default=64, help="k for TopK")
    p.add_argument(
        "--bandwidth", type=float, default=0.001, help="JumpReLU kernel bandwidth epsilon (SPEC)"
    )
    p.add_argument(
        "--l0-coefficient", type=float, default=1e-3, help="JumpReLU L0 penalty coefficient lambda"
    )
    p.add_argument(
        "--target-l0",
        type=int,
        default=64,
        help="JumpReLU thresholds are initialised to give this L0 at init",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the shared init and inputs")
    p.add_argument(
        "--saelab-variants",
        default="dense,auto",
        help="comma-separated saelab variants: a kernel mode (dense, auto: sparse kernels when L0 is low, sparse) with optional +bf16 (bf16 encoder matmul) and +compile (torch.compile of train_forward), e.g. auto+compile",
    )
    p.add_argument(
        "--libs",
        default=",".join(LIBRARIES[1:]),
        help="peer libraries to compare (importable ones only): saelens, dictionary_learning, sparsify",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per library")
    p.add_argument("--steps", type=int, default=5, help="timed steps per library (median reported)")
    p.add_argument(
        "--loss-steps",
        type=int,
        default=5,
        help="steps of each child run that records peak RSS and losses",
    )
    p.add_argument(
        "--floor-repeats",
        type=int,
        default=3,
        help="repeats of the bare encoder matmul (fp32 and bf16) floor",
    )
    p.add_argument("--no-timing", action="store_true", help="only the per-library child runs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--json", default=None, help="also write all results (every step time) to this JSON file"
    )
    a = p.parse_args()

    def setup(arch: str) -> Setup:
        return Setup(
            arch,
            a.d_in,
            a.d_sae,
            a.batch,
            a.k,
            a.bandwidth,
            a.l0_coefficient,
            a.target_l0,
            a.seed,
        )

    if a.child:
        print(json.dumps(run_alone(setup(a.arch), a.child, a.loss_steps)))
        return
    torch.manual_seed(a.seed)
    libs = [f"saelab:{v}" for v in a.saelab_variants.split(",")]
    libs += [lib for lib in a.libs.split(",") if lib and available(lib)]
    report: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "load_before": list(__import__("os").getloadavg()),
        },
        "versions": versions(),
        "config": {k: v for k, v in vars(a).items() if k != "json"},
        "results": [],
    }
    base = setup(a.arch.split(",")[0])
    floors = {
        "fp32": matmul_floor(base, torch.float32, a.floor_repeats),
        "bf16": matmul_floor(base, torch.bfloat16, a.floor_repeats),
    }
    report["matmul_floor_s"] = floors
    for arch in a.arch.split(","):
        s = setup(arch)
        arch_libs = [lib for lib in libs if not (lib == "sparsify" and arch != "topk")]
        times = {} if a.no_timing else alternate(s, arch_libs, a.warmup, a.steps)
        for lib in arch_libs:
            alone = child(s, lib, a.loss_steps)
            row = {"arch": arch, **alone}
            if times:
                med = statistics.median(times[alone["name"]])
                row |= {
                    "median_step_s": med,
                    "tokens_per_s": s.batch / med,
                    "step_times_s": times[alone["name"]],
                }
            report["results"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    report["machine"]["load_after"] = list(__import__("os").getloadavg())
    text = json.dumps(report, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
