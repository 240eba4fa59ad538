"""The training loop: one activation stream feeds one or many SAEs in lockstep (SPEC §1–2)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from saelab.kernels import resolve_matmul_dtype
from saelab.sae import SAE
from saelab.train.batches import BatchStream, cycling_message, rounding_message
from saelab.train.config import DEFAULT_TARGET_SCALING, TrainConfig, recipe_for
from saelab.train.dead import DeadLatentTracker
from saelab.train.distributed import (
    any_across_ranks,
    average_gradients,
    gather_batch,
    shard_batch,
    world,
)
from saelab.train.progress import TrainProgress
from saelab.train.resample import resample_dead_latents
from saelab.train.schedules import LRSchedule, SparsitySchedule

History = list[dict[str, float]]
# SPEC §2.2 uses a 10M-token dead window; shorter runs scale it to a fraction of their budget.
DEAD_WINDOW_TOKENS = 10_000_000
DEAD_WINDOW_FRACTION = 0.05


def normalization_constant(sample: Tensor) -> float:
    """C = sqrt(mean ‖x‖²) so that E[‖x/C‖²] = 1 (SPEC §1)."""
    return float(sample.double().pow(2).sum(-1).mean().sqrt())


def column_divisor(sample: Tensor, alpha: float = 0.0) -> float | Tensor:
    """What a column group is divided by in training: C (α = 0, SPEC §1), else, for a
    transcoder's target (TrainConfig.target_scaling), v_j ∝ σ_j^α with E[‖y/v‖²] = 1.

    σ_j is y_j's standard deviation on the sample. gemma's MLP outputs keep ~90% of their
    variance in a few dimensions, and a plain ‖y − ŷ‖² spends the latents on those; α = 0.5
    halved a layer-6 transcoder's Δ LM loss (docs/RESULTS.md, "A transcoder of layer 6's MLP").
    """
    if alpha == 0:
        return normalization_constant(sample)
    sigma = sample.double().std(0)
    weight = sigma.clamp_min(float(sigma.max()) * 1e-6).pow(alpha)
    return (weight * normalization_constant(sample / weight)).float()


class SAETrainer:
    """One SAE's optimizer, schedules, dead-latent tracker and history inside a lockstep run."""

    def __init__(self, sae: SAE, config: TrainConfig) -> None:
        recipe = recipe_for(sae.cfg, config)
        steps = config.total_steps
        self.sae, self.config = sae, config
        dtype = resolve_matmul_dtype(config.matmul_dtype, sae.device, sae.kernels.matmul_dtype)
        sae.kernels = dataclasses.replace(sae.kernels, matmul_dtype=dtype)
        self.lr = LRSchedule(
            lr=config.lr if config.lr is not None else recipe.lr,
            total_steps=steps,
            warmup_steps=min(
                config.lr_warmup_steps
                if config.lr_warmup_steps is not None
                else recipe.lr_warmup_steps,
                steps // 10,
            ),
            warmup=config.lr_warmup,
            start=config.lr_warmup_start,
            decay_steps=int(
                steps
                * (
                    config.lr_decay_fraction
                    if config.lr_decay_fraction is not None
                    else recipe.lr_decay_fraction
                )
            ),
        )
        if config.sparsity_warmup_steps is not None:
            lam_warmup = config.sparsity_warmup_steps
        elif recipe.sparsity_warmup_steps is not None:
            lam_warmup = min(recipe.sparsity_warmup_steps, steps // 10)
        else:
            lam_warmup = int(steps * recipe.sparsity_warmup_fraction)
        self.sparsity = SparsitySchedule(
            config.sparsity_coefficient
            if config.sparsity_coefficient is not None
            else recipe.sparsity_coefficient,
            lam_warmup,
        )
        self.optimizer = torch.optim.Adam(
            param_groups(
                sae, config.lr_scales if config.lr_scales is not None else recipe.lr_scales
            ),
            lr=self.lr(0),
            betas=config.betas or recipe.betas,
            eps=config.adam_eps,
            # One kernel per tensor instead of ~8 elementwise passes (CPU and CUDA).
            fused=True if sae.device.type in ("cpu", "cuda") else None,
        )
        window = config.dead_window or min(
            DEAD_WINDOW_TOKENS,
            max(config.batch_size, int(config.total_tokens * DEAD_WINDOW_FRACTION)),
        )
        self.tracker = DeadLatentTracker(sae.cfg.d_sae, window, sae.device)
        self.history: History = []
        self._pending: list[dict[str, Tensor | float]] = []

    def step(self, x: Tensor, step: int, target: Tensor | None = None) -> None:
        """One optimizer step on the normalised batch x (and a transcoder's normalised y)."""
        sae, cfg = self.sae, self.config
        lr, lam = self.lr(step), self.sparsity(step)
        dead_mask = self.tracker.dead_mask
        out = sae.train_forward(x, lam, dead_mask if self.tracker.any_dead() else None, target)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        average_gradients(sae.parameters())
        if sae.unit_norm_decoder:
            sae.remove_parallel_gradient()
        if cfg.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.step()
        sae.after_step()
        fired = any_across_ranks(out.fired())
        self.tracker.update(fired, x.shape[0] * world()[1])
        if cfg.resample_every and (step + 1) % cfg.resample_every == 0:
            revived = resample_dead_latents(
                sae,
                gather_batch(x),
                self.tracker.dead_mask,
                self.optimizer,
                None if target is None else gather_batch(target),
            )
            self.tracker.reset(revived)
        self._record(step, lr, lam, out, x if target is None else target, dead_mask)

    def _record(self, step: int, lr: float, lam: float, out, x: Tensor, dead_mask: Tensor) -> None:
        """Queue this step's metrics; x is what the SAE reconstructs (FVU is measured on it)."""
        with torch.no_grad():
            x_hat = out.x_hat
            metrics: dict[str, Tensor | float] = {
                "step": step,
                "lr": lr,
                "sparsity_coefficient": lam,
                "loss": out.loss.detach(),
                "l0": out.l0(),
                "fvu": (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12),
                "dead_fraction": dead_mask.float().mean(),
            } | {k: v.detach() for k, v in out.terms.items()}
        self._pending.append(metrics)
        if len(self._pending) >= self.config.log_every:
            self.flush()

    def flush(self) -> list[dict[str, float]]:
        """Move pending metrics to the history (one host sync per log_every steps); returns them."""
        new = [{k: float(v) for k, v in m.items()} for m in self._pending]
        self.history.extend(new)
        self._pending.clear()
        return new

    def state_dict(self) -> dict[str, Any]:
        self.flush()
        return {
            "sae": {k: v.clone() for k, v in self.sae.state_dict().items()},
            "sae_cfg": self.sae.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "tracker": self.tracker.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state["sae_cfg"].items():  # settings the data init derived
            setattr(self.sae.cfg, name, value)
        self.sae.needs_data_init = False
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tracker.load_state_dict(state["tracker"])


def param_groups(sae: SAE, scales: dict[str, float]) -> list[dict[str, Any]]:
    """One Adam group per LR multiplier: parameters named in scales get theirs, the rest 1."""
    params = dict(sae.named_parameters())
    unknown = set(scales) - set(params)
    if unknown:
        raise ValueError(
            f"TrainConfig.lr_scales names {sorted(unknown)}, which {sae.architecture} SAEs do "
            f"not have; valid: {sorted(params)}"
        )
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in params.items():
        groups.setdefault(scales.get(name, 1.0), []).append(param)
    return [{"params": params, "lr_scale": scale} for scale, params in groups.items()]


SHARED_FIELDS = (
    "total_tokens",
    "batch_size",
    "seed",
    "device",
    "normalize",
    "norm_estimate_tokens",
)


def per_sae_configs(config: TrainConfig | list[TrainConfig] | None, n: int) -> list[TrainConfig]:
    """One config per SAE; lockstep SAEs must agree on everything about the data stream."""
    configs = config if isinstance(config, list) else [config or TrainConfig()] * n
    if len(configs) != n:
        raise ValueError(f"train() got {n} SAEs but {len(configs)} configs")
    for name in SHARED_FIELDS:
        values = {str(getattr(c, name)) for c in configs}
        if len(values) > 1:
            raise ValueError(
                f"lockstep SAEs share one data stream, so TrainConfig.{name} must agree; "
                f"got {sorted(values)}"
            )
    return configs


Columns = slice | tuple[slice, slice]


class Lockstep:
    """Many SAEs trained on one activation stream; each reads its own columns (its hook).

    columns[i] selects SAE i's features from each batch (several hooks side by side), or for a
    transcoder a pair (its input's columns, its target's columns: SPEC §2.6); each column group
    gets its own normalisation constant C (SPEC §1).
    """

    def __init__(
        self,
        saes: list[SAE],
        configs: list[TrainConfig],
        data: Tensor | Iterable[Tensor],
        columns: list[Columns] | None = None,
    ) -> None:
        self.saes, self.configs = saes, configs
        shared = configs[0]
        self.total_steps, self.batch_size = shared.total_steps, shared.batch_size
        self.stream = BatchStream(data, shared.batch_size, shared.seed, shared.device)
        self.columns = [_pair(c) for c in columns or [slice(None)] * len(saes)]
        width = self.stream.d_in
        for sae, (cols, out) in zip(saes, self.columns, strict=True):
            d = len(range(width)[cols])
            if sae.cfg.d_in != d:
                raise ValueError(
                    f"{sae.cfg.architecture} SAE has d_in={sae.cfg.d_in} but the data has d_in={d}"
                )
            if sae.cfg.transcoder != (out is not None):
                raise ValueError(
                    "a transcoder needs target columns and an SAE none "
                    f"(d_out={sae.cfg.d_out}, target columns {out})"
                )
            if out is not None and len(range(width)[out]) != sae.cfg.d_out:
                raise ValueError(
                    f"transcoder has d_out={sae.cfg.d_out} but its target columns hold "
                    f"{len(range(width)[out])} features"
                )
            sae.to(shared.device).train()
        self.trainers = [SAETrainer(sae, cfg) for sae, cfg in zip(saes, configs, strict=True)]
        self.alphas = [_target_alpha(sae, cfg) for sae, cfg in zip(saes, configs, strict=True)]
        self.norms: dict[str, float | Tensor] = {}
        self.step = 0

    def _key(self, cols: slice, alpha: float = 0.0) -> str:
        """The name of a column group's constant; a target weighted by σ^α has its own."""
        return f"{cols.start}:{cols.stop}" + (f"^{alpha:g}" if alpha else "")

    def _normalised(self, x: Tensor, cols: slice | None, alpha: float = 0.0) -> Tensor | None:
        """x's columns divided by their C (None: no target columns)."""
        if cols is None:
            return None
        return x[:, cols] / self.norms[self._key(cols, alpha)]

    def _constant(self, cols: slice | None, alpha: float = 0.0) -> float | Tensor | None:
        return None if cols is None else self.norms[self._key(cols, alpha)]

    def prepare(self) -> None:
        """Estimate each column group's C on the first tokens, then per SAE: the data-dependent
        init (SPEC §2.0) for a fresh one, or, for one holding trained weights, unfold its
        stored normalisation so it takes x/C (folded back by finish)."""
        torch.manual_seed(self.configs[0].seed)
        shared = self.configs[0]
        sample = self.stream.peek(shared.norm_estimate_tokens).to(shared.device)
        for sae, (cols, out), alpha in zip(self.saes, self.columns, self.alphas, strict=True):
            for group, power in ((cols, 0.0), (out, alpha)):
                if group is not None and self._key(group, power) not in self.norms:
                    self.norms[self._key(group, power)] = (
                        column_divisor(sample[:, group], power) if shared.normalize else 1.0
                    )
            if out is not None:
                sae.cfg.metadata["target_scaling"] = alpha
            if sae.needs_data_init:
                sae.initialize_from_data(
                    self._normalised(sample, cols), self._normalised(sample, out, alpha)
                )
            else:
                c_out = self._constant(out, alpha)
                sae.fold_normalization(
                    1.0 / self.norms[self._key(cols)], None if c_out is None else 1.0 / c_out
                )

    def train_step(self) -> None:
        """One batch, one optimizer step for every SAE."""
        x = shard_batch(next(self.stream))
        for t, (cols, out), alpha in zip(self.trainers, self.columns, self.alphas, strict=True):
            t.step(self._normalised(x, cols), self.step, self._normalised(x, out, alpha))
        self.step += 1

    def finish(self) -> None:
        """Flush metrics, fold each C into its SAE (SPEC §1) and switch to eval mode."""
        for t, (cols, out), alpha in zip(self.trainers, self.columns, self.alphas, strict=True):
            t.flush()
            t.sae.fold_normalization(self.norms[self._key(cols)], self._constant(out, alpha))
            t.sae.eval()

    def latest_metrics(self) -> list[dict[str, float]]:
        """Each SAE's most recently flushed metrics ({} before the first flush)."""
        return [t.history[-1] if t.history else {} for t in self.trainers]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizers, trackers, data, RNG."""
        return {
            "step": self.step,
            "norms": dict(self.norms),
            "trainers": [t.state_dict() for t in self.trainers],
            "stream": self.stream.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.configs[0].device  # per-dimension divisors come back on the CPU
        self.step = state["step"]
        self.norms = {
            key: value.to(device) if isinstance(value, Tensor) else value
            for key, value in state["norms"].items()
        }
        for t, s in zip(self.trainers, state["trainers"], strict=True):
            t.load_state_dict(s)
        self.stream.load_state_dict(state["stream"])
        torch.set_rng_state(state["torch_rng"])
        for i, ((_, out), alpha) in enumerate(zip(self.columns, self.alphas, strict=True)):
            if out is not None and self._key(out, alpha) not in self.norms:
                # A checkpoint from before target scaling: the run continues as it started.
                if self._key(out) not in self.norms:
                    raise ValueError(f"checkpoint has no constant for target columns {out}")
                self.alphas[i] = 0.0
                self.saes[i].cfg.metadata["target_scaling"] = 0.0


def _target_alpha(sae: SAE, config: TrainConfig) -> float:
    """The power α of TrainConfig.target_scaling for this SAE: transcoders only."""
    if not sae.cfg.transcoder:
        if config.target_scaling:
            raise ValueError(
                f"TrainConfig.target_scaling={config.target_scaling} is for transcoders; "
                "this SAE has no target (set d_out, or leave target_scaling unset)"
            )
        return 0.0
    return DEFAULT_TARGET_SCALING if config.target_scaling is None else config.target_scaling


def _pair(columns: Columns) -> tuple[slice, slice | None]:
    """(input columns, target columns or None) of a Lockstep column spec."""
    return columns if isinstance(columns, tuple) else (columns, None)


def train(
    sae_or_list: SAE | list[SAE],
    data: Tensor | Iterable[Tensor],
    config: TrainConfig | list[TrainConfig] | None = None,
) -> History | list[History]:
    """Train one SAE (or several in lockstep on the same batches); returns per-step metrics.

    data: a tensor (N, d_in), an iterable of (B, d_in) batches, or an activation store; for
    a transcoder (SPEC §2.6) each row is its input and then its target, (N, d_in + d_out).
    config: one TrainConfig, or one per SAE (e.g. a sparsity sweep) agreeing on the data stream.
    Inputs are normalised by C (SPEC §1) during training; C is folded into every SAE when it
    returns, so each SAE then works on raw activations.
    """
    saes = [sae_or_list] if isinstance(sae_or_list, SAE) else list(sae_or_list)
    if not saes:
        raise ValueError("train() needs at least one SAE")
    configs = per_sae_configs(config, len(saes))
    columns: list[Columns] = [
        (slice(0, s.cfg.d_in), slice(s.cfg.d_in, s.cfg.d_in + s.cfg.out_dim))
        if s.cfg.transcoder
        else slice(None)
        for s in saes
    ]
    run = Lockstep(saes, configs, data, columns)
    _warn_about_budget(configs[0], data, run.total_steps * run.batch_size)
    run.prepare()
    names = [
        f"{s.cfg.architecture}[{i}]" if len(saes) > 1 else s.cfg.architecture
        for i, s in enumerate(saes)
    ]
    log_every = min(cfg.log_every for cfg in configs)
    with TrainProgress(
        run.total_steps * run.batch_size, names, any(c.progress for c in configs)
    ) as bar:
        while run.step < run.total_steps:
            run.train_step()
            refresh = run.step % log_every == 0
            bar.update(run.step * run.batch_size, run.latest_metrics() if refresh else None)
        run.finish()
        bar.update(run.step * run.batch_size, run.latest_metrics())
    histories = [t.history for t in run.trainers]
    return histories[0] if isinstance(sae_or_list, SAE) else histories


def _warn_about_budget(config: TrainConfig, data: Tensor | Iterable[Tensor], trained: int) -> None:
    """Warn when total_tokens is rounded to whole batches or a tensor is cycled over epochs."""
    notes = [
        rounding_message(config.total_tokens, config.batch_size, ("total_tokens", "batch_size"))
    ]
    if isinstance(data, Tensor):
        rows = data.reshape(-1, data.shape[-1]).shape[0]
        notes.append(cycling_message("the activation tensor", rows, trained))
    for note in filter(None, notes):
        warnings.warn(note, stacklevel=3)
