"""Train SAEs with the peer libraries' OWN training code on saelab activation caches, then score
them on held-out activations with saelab's definitions (issue 15 item 5: side-by-side quality).

Peers and variants (``--library`` / ``--variant``):
  saelens              jumprelu-step, jumprelu-tanh, jumprelu-target, topk, batchtopk
                       (sae_lens.SAETrainer + its TrainingSAE classes; data fed from our cache)
  dictionary_learning  jumprelu-target (JumpReluTrainer, target_l0), batchtopk (BatchTopKTrainer)
                       (dictionary_learning.training.trainSAE, unchanged)
  sparsify             topk (SparseCoder + SignSGD/ScheduleFreeWrapper; Trainer.fit's step
                       replicated line by line, since sparsify's Trainer needs a HF model)

Setup (separate venv, run from the repo root):
  python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0
  .venv-bench/bin/pip install torch==2.13.0 sae-lens dictionary-learning eai-sparsify
  .venv-bench/bin/pip uninstall -y torchvision && .venv-bench/bin/pip install --no-deps -e .

Run one peer (appends one JSON line to --out and prints it):
  .venv-bench/bin/python benchmarks/peers.py --cache /work/cache/l6 --heldout /work/cache/l6-heldout \
      --library saelens --variant batchtopk --tokens 1000000 --out benchmarks/results-peers.jsonl
  (--lr omitted = the peer's default LR, listed below.)
Check an exported SAE against the peer's own forward (main venv, saelab only):
  .venv/bin/python benchmarks/peers.py --check-export DIR

What is fixed across peers: width (--width), token budget (--tokens; steps = tokens // batch,
the last partial batch dropped), batch size (--batch-size), LR (--lr), k / target L0 (--k,
--target-l0). Everything else is the peer's own recommendation; ``settings`` in the JSON
records every value used, and ``--set KEY=VALUE`` overrides one (e.g. --set l0_coefficient=2).

Default LRs (from the installed sources):
  saelens (all variants)    3e-4        sae_lens/config.py:264 (LanguageModelSAERunnerConfig.lr)
  dictionary_learning jumprelu-target  7e-5   dictionary_learning/trainers/jumprelu.py:85
  dictionary_learning batchtopk  2e-4/sqrt(width/2^14) = 4e-4 at 4096
                                          dictionary_learning/trainers/batch_top_k.py:143
  sparsify topk  5e-3/sqrt(width/2^14) = 1e-2 at 4096 (signum)   sparsify/trainer.py:166

Per-peer recipe and where it comes from:
  saelens: runner defaults (Adam 0.9/0.999, constant LR, no warm-up, grad-clip 1, fp32,
    dead_feature_window 1000 steps, decoder_init_norm 0.1, b_dec 0, W_enc = W_decᵀ).
    normalize_activations "expected_average_only_in" for every variant (used by every example in
    docs/training_saes.md; folded into the weights by SAETrainer.fit).
    jumprelu-step: docs example: l0_coefficient 5, bandwidth 0.01, init threshold 0.01.
    jumprelu-tanh: docs example: l0_coefficient 5, tanh scale 4, bandwidth 2, init threshold
      0.1, pre_act_loss_coefficient 3e-6, l0_warm_up_steps = all steps, lr_decay_steps = steps/5.
    jumprelu-target: docs example of the quadratic (Gemma Scope 2) loss: target_l0, coefficient
      5, bandwidth 0.01, init threshold 0.01.
    topk / batchtopk: class defaults (aux_loss_coefficient 1, rescale_acts_by_decoder_norm,
      batchtopk topk_threshold_lr 0.01); batchtopk saves as JumpReLU with a global threshold.
  dictionary_learning (PyPI 0.1.0): trainer defaults + the maintainers' demo
    (dictionary_learning_demo/demo.py: trainSAE(normalize_activations=True); demo_config.py:
    decay_start = 0.8·steps). jumprelu: Adam (0, 0.999), bandwidth 0.001, sparsity_penalty 1,
    θ₀ 0.001, no b_dec subtraction. batchtopk: Adam, auxk_alpha 1/32, b_dec = geometric median
    of batch 0, threshold EMA beta 0.999; saves as JumpReLU with one global threshold.
  sparsify: TrainConfig/SparseCoderConfig defaults: signum (SignSGD in ScheduleFreeWrapper,
    momentum 0.95, no schedule), fvu loss, auxk_alpha 0, b_dec = mean of batch 0, decoder
    re-normalised before each forward, no input normalisation; the evaluated/exported weights
    are the schedule-free average (optimizer.eval(), as sparsify's checkpointing does).

Deviations from the peers' recipes (all recorded in ``settings``):
  - Step counts that do not fit a short run are capped: dictionary_learning warmup_steps
    min(1000, 5% of steps), sparsity_warmup_steps min(2000, 10%), BatchTopK threshold_start_step
    min(1000, 10%). Uncapped, 0.1.0 asserts (warm-up ≥ steps) or never sets the BatchTopK
    threshold (it stays −1: every positive latent fires at inference).
  - SAELens's scaling factor is estimated on min(1000, steps) batches of the training tokens
    (SAELens would draw 1000 extra batches from its store); dictionary_learning's trainSAE
    estimates it on the first ≤101 training batches itself. The estimate counts as training time.
  - Data: the first --tokens rows of the cache, shuffled once with --seed, batches of exactly
    --batch-size; no peer ActivationsStore / buffer / LM is involved.
  - Dead-latent windows stay at the peers' defaults (SAELens 1000 steps; dictionary_learning
    and sparsify 10M tokens), so AuxK / pre-act losses never switch on in runs shorter than that.

Short budgets: in gemma-3-270m layer 6 the mean holds 88% of E‖x‖² (FVU of x̂ = 0 is 8.6 on
l6-heldout), and recipes with b_dec = 0 and Adam at ~1e-4 cannot learn that offset in a few hundred
steps, so FVU > 1 there is the recipe's result, not a harness fault (on centred synthetic data
every variant but saelens jumprelu-tanh and dictionary_learning jumprelu-target reaches FVU < 0.5
in 312 steps).

Metrics (SPEC §3), on the first --heldout-tokens rows of --heldout, on RAW activations with the
peer's inference forward (BatchTopK through its saved threshold): l0 = mean #nonzero latents,
fvu = Σ‖x−x̂‖² / Σ‖x−x̄‖², dead_fraction = latents never nonzero on those tokens; seconds = wall
time of training only (incl. norm estimation and init), tokens_per_s = trained tokens / seconds;
peak_rss_mb = the process's peak RSS when training ends (the training and held-out rows
included), training_rss_mb = how far training raised it above the peak after loading the rows.

--export DIR writes cfg.json + sae_weights.safetensors (SAELens format, normalisation already
folded, thresholds clamped at 0, which is exact for these ReLU'd encoders) that saelab.load_sae
reads (topk → "topk"; jumprelu and batchtopk → "jumprelu"), plus peer_check.safetensors (512
held-out rows with the peer's own f and x̂) for --check-export.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata as md
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars off; must precede torch (imports tqdm)

import torch
from torch import Tensor

VARIANTS = {
    "saelab": ("jumprelu", "topk", "batchtopk"),
    "saelens": ("jumprelu-step", "jumprelu-tanh", "jumprelu-target", "topk", "batchtopk"),
    "dictionary_learning": ("jumprelu-target", "batchtopk"),
    "sparsify": ("topk",),
}
PACKAGES = {
    "saelab": "saelab",
    "saelens": "sae-lens",
    "dictionary_learning": "dictionary-learning",
    "sparsify": "eai-sparsify",
}
CHECK_FILE = "peer_check.safetensors"
CHECK_ROWS = 512


def fail(message: str) -> NoReturn:
    """Exit with a one-line error."""
    sys.exit(f"peers.py: error: {message}")


# ---- data --------------------------------------------------------------------------------------
def read_rows(path: str, n: int) -> tuple[Tensor, dict]:
    """The first `n` activation rows (fp32) of a saelab cache, and its provenance."""
    from saelab.data.cache_reader import ActivationCache

    cache = ActivationCache(path)
    hook = cache.default_hook()
    if cache.tokens < n:
        fail(f"cache {path} holds {cache.tokens} tokens, fewer than the {n} asked for")
    from recipes import load_rows  # benchmarks/recipes.py, beside this script

    meta = {"model": cache.config.get("model"), "hook": hook}
    return load_rows(path, n), meta | {"context_size": cache.config.get("context_size")}


class Batches:
    """Re-iterable, seeded shuffle of the training rows in batches of exactly `batch_size`."""

    def __init__(self, rows: Tensor, batch_size: int, seed: int) -> None:
        self.rows, self.batch_size = rows, batch_size
        self.steps = len(rows) // batch_size
        if self.steps < 1:
            fail(f"--tokens {len(rows)} is smaller than one batch of {batch_size}")
        self.order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Tensor]:
        for i in range(self.steps):  # fresh copies: trainSAE divides batches in place
            yield self.rows[self.order[i * self.batch_size : (i + 1) * self.batch_size]]


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cap(default: int, fraction: float, steps: int) -> int:
    """A step-count default, capped at `fraction` of the run (at least 1 step)."""
    return min(default, max(1, int(fraction * steps)))


def resolve(defaults: dict, overrides: dict) -> dict:
    """The peer's settings with --set overrides applied (unknown keys are an error)."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        fail(f"--set {unknown} not a setting of this peer; known: {sorted(defaults)}")
    return defaults | overrides


@dataclass
class Trained:
    """A trained peer SAE: its own inference forward on raw activations, and its export."""

    encode: Callable[[Tensor], Tensor]  # raw x -> dense codes f
    decode: Callable[[Tensor], Tensor]  # f -> x̂
    export: Callable[[], tuple[str, dict[str, Tensor], bool]]  # arch, state, apply_b_dec_to_input
    settings: dict
    seconds: float


def jumprelu_state(
    W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, theta: Tensor
) -> dict:
    """saelab/SAELens JumpReLU tensors; θ clamped at 0 (exact for ReLU'd JumpReLU encoders)."""
    theta = theta.expand(W_enc.shape[1]) if theta.ndim == 0 else theta
    state = {
        "W_enc": W_enc,
        "b_enc": b_enc,
        "W_dec": W_dec,
        "b_dec": b_dec,
        "threshold": theta.clamp(min=0),
    }
    return {k: v.detach().float().contiguous().clone() for k, v in state.items()}


# ---- saelab (the reference row of benchmarks/train_run.py) ---------------------------------------
def train_saelab(variant: str, data: Batches, args: argparse.Namespace, overrides: dict) -> Trained:
    """saelab.train from saelab's default init and budget recipe, on the same batches."""
    import saelab
    from saelab.train.config import TrainConfig, recipe_for

    option = {"k": args.k} if variant in ("topk", "batchtopk") else {"target_l0": args.target_l0}
    defaults = option | {"lr": args.lr, "matmul_dtype": "auto"}
    settings = resolve(defaults, overrides)
    sae = saelab.create_sae(
        variant, data.rows.shape[1], args.width, seed=args.seed, **{k: settings[k] for k in option}
    )
    config = TrainConfig(
        total_tokens=data.steps * data.batch_size,
        batch_size=data.batch_size,
        seed=args.seed,
        lr=settings["lr"],
        matmul_dtype=settings["matmul_dtype"],
    )
    settings["lr"] = settings["lr"] or recipe_for(sae.cfg, config).lr
    start = time.perf_counter()
    saelab.train(sae, data, config)
    seconds = time.perf_counter() - start
    sae.eval()
    settings["peer_config"] = {"sae": sae.cfg.to_dict(), "train": config.to_dict()}

    def export() -> tuple[str, dict[str, Tensor], bool]:
        state = {k: v.detach().float().contiguous().clone() for k, v in sae.state_dict().items()}
        return sae.cfg.architecture, state, sae.cfg.apply_b_dec_to_input

    return Trained(sae.encode, sae.decode, export, settings, seconds)


# ---- SAELens -------------------------------------------------------------------------------------
def train_saelens(
    variant: str, data: Batches, args: argparse.Namespace, overrides: dict
) -> Trained:
    """SAELens's SAETrainer with its TrainingSAE class, runner defaults and documented settings."""
    import sae_lens as sl

    steps, d_in = data.steps, data.rows.shape[1]
    sae_cls, cfg_cls = {
        "topk": (sl.TopKTrainingSAE, sl.TopKTrainingSAEConfig),
        "batchtopk": (sl.BatchTopKTrainingSAE, sl.BatchTopKTrainingSAEConfig),
    }.get(variant, (sl.JumpReLUTrainingSAE, sl.JumpReLUTrainingSAEConfig))
    defaults: dict = {"lr": args.lr or 3e-4, "normalize_activations": "expected_average_only_in"}
    defaults["autocast"] = False  # the runner's default; --set autocast=true: its bf16 autocast
    if variant in ("topk", "batchtopk"):
        defaults["k"] = args.k
    elif variant == "jumprelu-tanh":
        defaults |= {
            "jumprelu_sparsity_loss_mode": "tanh",
            "l0_coefficient": 5.0,
            "jumprelu_tanh_scale": 4.0,
            "jumprelu_bandwidth": 2.0,
            "jumprelu_init_threshold": 0.1,
            "pre_act_loss_coefficient": 3e-6,
            "l0_warm_up_steps": steps,
            "lr_decay_steps": steps // 5,
        }
    else:
        mode = "quadratic" if variant == "jumprelu-target" else "step"
        defaults |= {"jumprelu_sparsity_loss_mode": mode, "l0_coefficient": 5.0}
        defaults |= {"jumprelu_bandwidth": 0.01, "jumprelu_init_threshold": 0.01}
        if mode == "quadratic":
            defaults["target_l0"] = args.target_l0
    defaults["n_batches_for_norm_estimate"] = min(1000, steps)
    settings = resolve(defaults, overrides)
    sae_fields = {f.name for f in dataclasses.fields(cfg_cls)}
    sae_cfg = cfg_cls(
        d_in=d_in, d_sae=args.width, **{k: v for k, v in settings.items() if k in sae_fields}
    )
    runner = sl.LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        training_tokens=steps * data.batch_size,
        train_batch_size_tokens=data.batch_size,
        device="cpu",
        checkpoint_path=None,
        output_path=None,
        verbose=False,
        logger=sl.LoggingConfig(log_to_wandb=False),
        **{k: v for k, v in settings.items() if k not in sae_fields},
    )
    trainer_cfg = runner.to_sae_trainer_config()
    sae_dict = {k: v for k, v in dataclasses.asdict(sae_cfg).items() if k != "metadata"}
    torch.manual_seed(args.seed)
    sae = sae_cls(sae_cfg)
    trainer = sl.SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(data))
    start = time.perf_counter()
    if sae_cfg.normalize_activations == "expected_average_only_in":
        trainer.activation_scaler.estimate_scaling_factor(
            d_in, iter(data), trainer_cfg.n_batches_for_norm_estimate
        )
    scale = trainer.activation_scaler.scaling_factor
    sae = trainer.fit()  # folds the scaling factor into the weights at the end
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)  # the peer's own inference form (BatchTopK -> JumpReLU)
        inf = sl.SAE.load_from_disk(tmp)
    inf.eval()
    trainer_dict = {k: v for k, v in dataclasses.asdict(trainer_cfg).items() if k != "logger"}
    settings |= {"scaling_factor": scale, "peer_config": {"sae": sae_dict, "trainer": trainer_dict}}

    def export() -> tuple[str, dict[str, Tensor], bool]:
        s = inf.state_dict()
        if "threshold" in s:  # jumprelu, and batchtopk saved as jumprelu
            return (
                "jumprelu",
                jumprelu_state(s["W_enc"], s["b_enc"], s["W_dec"], s["b_dec"], s["threshold"]),
                True,
            )
        norms = s["W_dec"].norm(dim=-1) if inf.cfg.rescale_acts_by_decoder_norm else 1.0
        state = {"W_enc": s["W_enc"] * norms, "b_enc": s["b_enc"] * norms}  # norms ≈ 1 (folded)
        state |= {"W_dec": s["W_dec"] / torch.as_tensor(norms).reshape(-1, 1), "b_dec": s["b_dec"]}
        return "topk", {k: v.detach().float().contiguous().clone() for k, v in state.items()}, True

    return Trained(inf.encode, inf.decode, export, settings, seconds)


# ---- dictionary_learning -------------------------------------------------------------------------
def train_dictionary_learning(
    variant: str, data: Batches, args: argparse.Namespace, overrides: dict
) -> Trained:
    """dictionary_learning's trainSAE with JumpReluTrainer / BatchTopKTrainer."""
    from dictionary_learning.dictionary import JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE, BatchTopKTrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.training import trainSAE

    steps = data.steps
    defaults: dict = {"normalize_activations": True, "decay_start": int(0.8 * steps)}
    defaults |= {"warmup_steps": cap(1000, 0.05, steps)}
    if variant == "jumprelu-target":
        defaults |= {"lr": args.lr or 7e-5, "target_l0": float(args.target_l0), "bandwidth": 0.001}
        defaults |= {"sparsity_penalty": 1.0, "sparsity_warmup_steps": cap(2000, 0.1, steps)}
    else:
        defaults |= {"lr": args.lr or 2e-4 / math.sqrt(args.width / 2**14), "k": args.k}
        defaults |= {"auxk_alpha": 1 / 32, "threshold_beta": 0.999}
        defaults |= {"threshold_start_step": cap(1000, 0.1, steps)}
    settings = resolve(defaults, overrides)
    trainer_kwargs = {k: v for k, v in settings.items() if k != "normalize_activations"}
    trainer_kwargs |= {
        "trainer": JumpReluTrainer if variant == "jumprelu-target" else BatchTopKTrainer,
        "steps": steps,
        "activation_dim": data.rows.shape[1],
        "dict_size": args.width,
        "layer": args.meta["hook"],
        "lm_name": str(args.meta["model"]),
        "seed": args.seed,
        "device": "cpu",
    }
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        trainSAE(
            data=data,
            trainer_configs=[trainer_kwargs],
            steps=steps,
            save_dir=tmp,
            normalize_activations=settings["normalize_activations"],
            device="cpu",
            autocast_dtype=torch.float32,
        )
        seconds = time.perf_counter() - start
        path = Path(tmp) / "trainer_0"
        peer_config = json.loads((path / "config.json").read_text())["trainer"]
        if variant == "jumprelu-target":
            ae = JumpReluAutoEncoder.from_pretrained(str(path / "ae.pt"))
        else:
            ae = BatchTopKSAE.from_pretrained(str(path / "ae.pt"))
    ae.eval()
    settings["peer_config"] = peer_config

    def export() -> tuple[str, dict[str, Tensor], bool]:
        if variant == "jumprelu-target":  # encoder takes x, not x - b_dec
            state = jumprelu_state(ae.W_enc, ae.b_enc, ae.W_dec, ae.b_dec, ae.threshold)
            return "jumprelu", state, bool(ae.apply_b_dec_to_input)
        enc, dec = ae.encoder, ae.decoder
        return (
            "jumprelu",
            jumprelu_state(enc.weight.T, enc.bias, dec.weight.T, ae.b_dec, ae.threshold),
            True,
        )

    return Trained(ae.encode, ae.decode, export, settings, seconds)


# ---- sparsify ------------------------------------------------------------------------------------
def train_sparsify(
    variant: str, data: Batches, args: argparse.Namespace, overrides: dict
) -> Trained:
    """sparsify's SparseCoder trained by a line-for-line copy of Trainer.fit's fvu step."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig, TrainConfig
    from sparsify.sign_sgd import SignSGD

    ref = TrainConfig(sae=SparseCoderConfig(), log_to_wandb=False)
    defaults = {
        "lr": args.lr or 5e-3 / math.sqrt(args.width / 2**14),
        "k": args.k,
        "optimizer": ref.optimizer,
        "momentum": 0.95,
        "auxk_alpha": ref.auxk_alpha,
        "dead_feature_threshold": ref.dead_feature_threshold,
        "k_decay_steps": ref.k_decay_steps,
        "normalize_decoder": ref.sae.normalize_decoder,
        "multi_topk": ref.sae.multi_topk,
        "loss_fn": ref.loss_fn,
    }
    settings = resolve(defaults, overrides)
    if (
        settings["optimizer"] != "signum"
        or settings["k_decay_steps"]
        or settings["loss_fn"] != "fvu"
    ):
        fail(
            "only sparsify's default optimizer=signum, k_decay_steps=0, loss_fn=fvu are replicated"
        )
    cfg = SparseCoderConfig(
        num_latents=args.width,
        k=settings["k"],
        normalize_decoder=settings["normalize_decoder"],
        multi_topk=settings["multi_topk"],
    )
    torch.manual_seed(args.seed)
    sae = SparseCoder(data.rows.shape[1], cfg, "cpu", dtype=torch.float32)
    opt = ScheduleFreeWrapper(
        SignSGD([{"params": sae.parameters(), "lr": settings["lr"]}]), momentum=settings["momentum"]
    )
    opt.train()
    since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    start = time.perf_counter()
    for step, x in enumerate(data):
        if step == 0:  # "Ensure the preactivations are centered at initialization"
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        if cfg.normalize_decoder:
            sae.set_decoder_norm_to_unit_norm()
        dead = (
            since_fired > settings["dead_feature_threshold"] if settings["auxk_alpha"] > 0 else None
        )
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=dead, total_variance=total_variance)
        loss = out.fvu + settings["auxk_alpha"] * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        if cfg.normalize_decoder:
            sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        since_fired += len(x)
        since_fired[out.latent_indices.flatten()] = 0
    opt.eval()  # schedule-free: evaluate/save the averaged weights, as sparsify's _checkpoint does
    seconds = time.perf_counter() - start
    sae.eval()
    settings["peer_config"] = {
        "sae": cfg.to_dict(),
        "train": {k: v for k, v in ref.to_dict().items() if k != "sae"},
    }

    def encode(x: Tensor) -> Tensor:
        acts, idx, _ = sae.encode(x)
        return torch.zeros(len(x), sae.num_latents).scatter_(-1, idx, acts.float())

    def decode(f: Tensor) -> Tensor:
        acts, idx = f.topk(cfg.k, dim=-1, sorted=False)
        return sae.decode(acts, idx)

    def export() -> tuple[str, dict[str, Tensor], bool]:
        state = {
            "W_enc": sae.encoder.weight.T,
            "b_enc": sae.encoder.bias,
            "W_dec": sae.W_dec,
            "b_dec": sae.b_dec,
        }
        return "topk", {k: v.detach().float().contiguous().clone() for k, v in state.items()}, True

    return Trained(encode, decode, export, settings, seconds)


TRAINERS = {
    "saelab": train_saelab,
    "saelens": train_saelens,
    "dictionary_learning": train_dictionary_learning,
    "sparsify": train_sparsify,
}


# ---- evaluation and export -----------------------------------------------------------------------
@torch.no_grad()
def evaluate(trained: Trained, x: Tensor, batch: int = 4096) -> dict:
    """Held-out L0, FVU (SPEC §3, variance about the eval-set mean) and dead fraction."""
    mean = x.double().mean(0)
    sse = var = 0.0
    active = fired = None
    for chunk in x.split(batch):
        f = trained.encode(chunk)
        x_hat = trained.decode(f)
        sse += (chunk.double() - x_hat.double()).pow(2).sum().item()
        var += (chunk.double() - mean).pow(2).sum().item()
        nz = f != 0
        active = nz.sum(0) if active is None else active + nz.sum(0)
        fired = nz.any(0) if fired is None else fired | nz.any(0)
    return {
        "l0": active.sum().item() / len(x),
        "fvu": sse / var,
        "dead_fraction": 1.0 - fired.float().mean().item(),
    }


def write_export(path: Path, trained: Trained, record: dict, meta: dict, x_check: Tensor) -> None:
    """SAELens-format directory for saelab.load_sae, plus the peer's outputs for --check-export."""
    from safetensors.torch import save_file

    arch, state, apply_b_dec = trained.export()
    d_sae, d_in = state["W_dec"].shape
    cfg = {
        "architecture": arch,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.0.0",
            "model_name": meta["model"],
            "hook_name": meta["hook"],
            "context_size": meta["context_size"],
        },
        "peer": {
            k: record[k] for k in ("library", "version", "variant", "lr", "tokens", "settings")
        },
    }
    if arch == "topk":
        cfg |= {"k": record["settings"]["k"], "rescale_acts_by_decoder_norm": False}
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
    with torch.no_grad():
        f = trained.encode(x_check)
        ref = {"x": x_check, "f": f, "x_hat": trained.decode(f)}
    save_file({k: v.float().contiguous() for k, v in ref.items()}, str(path / CHECK_FILE))


@torch.no_grad()
def check_export(path: Path, rtol: float = 1e-4) -> int:
    """Compare saelab's encode/decode of an exported SAE with the peer's stored outputs."""
    from safetensors.torch import load_file

    from saelab import load_sae

    sae = load_sae(path)
    ref = load_file(str(path / CHECK_FILE))
    f = sae.encode(ref["x"])
    x_hat = sae.decode(f)
    report: dict = {"path": str(path), "architecture": sae.cfg.architecture, "rtol": rtol}
    ok = True
    for name, ours, theirs in (("f", f, ref["f"]), ("x_hat", x_hat, ref["x_hat"])):
        atol = rtol * theirs.abs().max().item()  # scale-aware floor for entries at or near 0
        close = torch.isclose(ours, theirs, rtol=rtol, atol=atol)
        report[f"{name}_mismatches"] = int((~close).sum())
        report[f"{name}_max_abs_diff"] = (ours - theirs).abs().max().item()
        ok &= bool(close.all())
    report["support_flips"] = int(((f != 0) != (ref["f"] != 0)).sum())
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


# ---- CLI -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring for the recipes)."""
    p = argparse.ArgumentParser(
        prog="peers.py",
        description="Train an SAE with a peer library's own trainer on a saelab activation cache\n"
        "and report held-out L0 / FVU / dead fraction / speed as one JSON line.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cache", help="training cache dir (saelab activation cache)")
    p.add_argument("--heldout", help="held-out cache dir, for the metrics")
    p.add_argument("--library", choices=sorted(VARIANTS), help="peer library")
    p.add_argument(
        "--variant",
        choices=sorted({v for vs in VARIANTS.values() for v in vs}),
        help="architecture / sparsity loss (library combinations: see below)",
    )
    p.add_argument("--lr", type=float, help="learning rate (default: the peer's own default)")
    p.add_argument("--tokens", type=int, help="training tokens: the first N cache rows, shuffled")
    p.add_argument("--width", type=int, default=4096, help="number of latents d_sae (default 4096)")
    p.add_argument("--k", type=int, default=32, help="k of TopK / BatchTopK (default 32)")
    p.add_argument(
        "--target-l0", type=float, default=32, help="target L0 of jumprelu-target (default 32)"
    )
    p.add_argument(
        "--batch-size", type=int, default=4096, help="tokens per training step (default 4096)"
    )
    p.add_argument(
        "--heldout-tokens", type=int, default=50000, help="held-out rows scored (default 50000)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the data order and the init (default 0)"
    )
    p.add_argument("--out", type=Path, help="append the JSON result line to this file")
    p.add_argument(
        "--export", type=Path, metavar="DIR", help="also write the SAE as a SAELens-format dir"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one peer setting (JSON value; repeatable), e.g. --set l0_coefficient=2",
    )
    p.add_argument(
        "--check-export",
        type=Path,
        metavar="DIR",
        help="only check an --export dir with saelab (run in the main venv) and exit",
    )
    args = p.parse_args(argv)
    if args.check_export:
        return args
    missing = [
        o for o in ("cache", "heldout", "library", "variant", "tokens") if getattr(args, o) is None
    ]
    if missing:
        fail(f"missing {', '.join('--' + m for m in missing)}")
    if args.variant not in VARIANTS[args.library]:
        fail(
            f"--library {args.library} has no variant {args.variant!r} "
            f"(it has: {', '.join(VARIANTS[args.library])})"
        )
    args.overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set {item!r} is not KEY=VALUE")
        try:
            args.overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            args.overrides[key] = value
    return args


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate, optionally export; print and append the JSON record."""
    args = parse_args(argv)
    if args.check_export:
        return check_export(args.check_export)
    rows, args.meta = read_rows(args.cache, args.tokens)
    heldout, _ = read_rows(args.heldout, args.heldout_tokens)
    data = Batches(rows, args.batch_size, args.seed)
    rss_data = peak_rss_mb()
    trained = TRAINERS[args.library](args.variant, data, args, args.overrides)
    rss_trained = peak_rss_mb()
    metrics = evaluate(trained, heldout)
    trained_tokens = data.steps * data.batch_size
    settings = trained.settings
    k_or_target = settings.get("k", settings.get("target_l0"))
    record = {
        "library": args.library,
        "version": md.version(PACKAGES[args.library]),
        "variant": args.variant,
        "lr": settings["lr"],
        "tokens": args.tokens,
        "width": args.width,
        "batch_size": args.batch_size,
        "k_or_target": k_or_target,
        **metrics,
        "seconds": trained.seconds,
        "tokens_per_s": trained_tokens / trained.seconds,
        "steps": data.steps,
        "peak_rss_mb": rss_trained,
        "training_rss_mb": rss_trained - rss_data,
        "tokens_trained": trained_tokens,
        "heldout_tokens": len(heldout),
        "seed": args.seed,
        "torch": torch.__version__,
        "cache": str(args.cache),
        "heldout": str(args.heldout),
        "settings": settings,
    }
    if args.export:
        write_export(args.export, trained, record, args.meta, heldout[:CHECK_ROWS])
        record["export"] = str(args.export)
    line = json.dumps(record, default=str)
    print(line)
    if args.out:
        with args.out.open("a") as handle:
            handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
