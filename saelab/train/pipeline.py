"""`saelab train`: a lockstep sweep from one activation stream, with checkpoints and resume."""

from __future__ import annotations

import json
import signal
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
import yaml

from saelab.sae import SAE, create_sae
from saelab.train.batches import cycling_message, rounding_message
from saelab.train.checkpoint import checkpoint_path, load_latest_checkpoint, save_checkpoint
from saelab.train.config import TrainConfig
from saelab.train.distributed import any_rank, barrier, init_from_env, is_main, world
from saelab.train.outputs import MetricsWriter, final_metrics, plot_training_curves
from saelab.train.progress import TrainProgress
from saelab.train.run_config import RunConfig
from saelab.train.trainer import Columns, Lockstep

CONFIG_FILE = "config.yaml"
BYTES_PER_PARAM = 16  # fp32 weight + gradient + two Adam moments
ACTIVATION_COPIES = 8  # pre-activations, features, masks and their gradients per latent
# Tokens the LM computes before they are shuffled together when a run trains straight from the
# model: consecutive contexts come from a few documents, and 65k-token windows of them doubled the
# held-out FVU of a 300k-token cache run (docs/training.md, "Shuffling"). 262k tokens are about
# two minutes of gemma-3-270m on 2 CPU cores before the first step.
MODEL_MIX_TOKENS = 1 << 18


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written and the run can be resumed."""


class RunAlreadyFinished(Exception):
    """`--resume` of a run whose every SAE is already saved: nothing to do, nothing changed."""


@dataclass
class SweepMember:
    """One SAE of the sweep and where its files go."""

    name: str
    hook: str
    sae: SAE
    directory: Path
    columns: Columns
    # After training, on the main process: outputs.final_metrics of the member's metrics.jsonl.
    final: dict[str, float] | None = None


def _member_name(
    hook: str, arch: str, options: dict[str, Any], sparsity: float | None, hooks: int
) -> str:
    parts = [f"k{options['k']}"] if "k" in options else []
    parts += [f"l0t{options['target_l0']:g}"] if "target_l0" in options else []
    parts += [f"lam{sparsity:g}"] if sparsity is not None and "k" not in options else []
    setting = "-".join(parts) or "default"
    return (f"{hook}--" if hooks > 1 else "") + f"{arch}-{setting}"


def open_activations(cfg: RunConfig, base: TrainConfig):
    """The activation store for the run's hooks (all hooks from one LM pass or one cache read),
    the model's name, and the tokens the source holds (None: streamed, not known up front)."""
    from saelab.data import ActivationStore
    from saelab.data.cache_reader import ActivationCache

    batch_size, seed, device = base.batch_size, base.seed, base.device
    if cfg.cache:
        cache = ActivationCache(cfg.cache, model=cfg.model, hooks=cfg.data_hooks())
        store = ActivationStore.from_cache(
            cache, hook=cfg.data_hooks(), batch_size=batch_size, seed=seed, device=device
        )
        return store, cache.config["model"], cache.tokens
    from saelab.lm import load_model

    lm = load_model(cfg.model, device=device, dtype=cfg.model_dtype)
    names = lm.hook_names()
    for hook in cfg.data_hooks():
        if hook not in names:
            raise ValueError(f"hook: {hook!r} is not a hook of {cfg.model}; valid: {names}")
    # The LM runs over only the tokens the run reads: its steps, and the SPEC §1 sample for C.
    needed = max(base.total_steps * batch_size, base.norm_estimate_tokens)
    store = ActivationStore.from_model(
        lm, cfg.data_hooks(), cfg.corpus, batch_size=batch_size, context_size=cfg.context_size,
        model_batch_size=cfg.model_batch_size, buffer_tokens=min(MODEL_MIX_TOKENS, needed),
        seed=seed, max_tokens=needed, device=device,
    )  # fmt: skip
    return store, lm.name, None


def check_memory(
    members: list[SweepMember], batch_size: int, device: str, limit_gb: float | None
) -> str:
    """Estimate the sweep's training memory; refuse before any work if it will not fit."""
    params = sum(p.numel() for m in members for p in m.sae.parameters())
    acts = sum(batch_size * m.sae.cfg.d_sae for m in members) * ACTIVATION_COPIES * 4
    need = params * BYTES_PER_PARAM + acts
    if limit_gb is not None:
        available = limit_gb * 2**30
    elif torch.device(device).type == "cuda":
        available = torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        available = psutil.virtual_memory().available
    report = f"{len(members)} SAE(s), estimated training memory {need / 2**30:.2f} GiB of {available / 2**30:.2f} GiB available"
    if need > 0.9 * available:
        raise MemoryError(
            f"{report}: this sweep will not fit; use fewer SAEs, a smaller width or batch size, "
            "or set max_memory_gb if the estimate is too cautious"
        )
    return report


def member_layout(cfg: RunConfig, out: Path) -> list[tuple[str, Path]]:
    """(name, output folder) of every SAE of the sweep, in cfg.sweep() order."""
    sweep = cfg.sweep()
    names = [_member_name(h, a, o, s, len(cfg.hooks)) for h, a, o, s in sweep]
    return [(name, out if len(sweep) == 1 else out / name) for name in names]


def build_members(cfg: RunConfig, d_per_hook: int, model_name: str, out: Path) -> list[SweepMember]:
    """Create every SAE of the sweep (seeded) with its output folder."""
    seed = cfg.train_config(None, None).seed
    width = cfg.width or 16 * d_per_hook
    sweep = cfg.sweep()
    members = []
    layout = member_layout(cfg, out)
    hooks = cfg.data_hooks()

    def cols(hook: str) -> slice:
        h = hooks.index(hook)
        return slice(h * d_per_hook, (h + 1) * d_per_hook)

    transcoder = {}
    if cfg.target_hook:  # SPEC §2.6: every member predicts the target hook from its own
        transcoder = {"d_out": d_per_hook, "skip_connection": cfg.skip_connection}
        transcoder["target_hook_name"] = cfg.target_hook
    for i, (hook, arch, options, _) in enumerate(sweep):
        name, directory = layout[i]
        sae = create_sae(
            arch, d_per_hook, width, seed=seed + i, model_name=model_name, hook_name=hook,
            context_size=cfg.context_size, dataset=cfg.corpus if not cfg.cache else cfg.cache,
            **options, **transcoder,
        )  # fmt: skip
        columns = (cols(hook), cols(cfg.target_hook)) if cfg.target_hook else cols(hook)
        members.append(SweepMember(name, hook, sae, directory, columns))
    return members


def finished_tokens(cfg: RunConfig, out: Path) -> int | None:
    """Tokens trained when every SAE of the run at `out` is saved (a finished run), else None."""
    for _, directory in member_layout(cfg, out):
        try:
            json.loads((directory / "sae" / "cfg.json").read_text())
        except (OSError, ValueError):
            return None
    base = cfg.train_config(None, None)
    return base.total_steps * base.batch_size


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


@contextmanager
def _stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag checked between steps (so a checkpoint can be written)."""
    received: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _: received.append(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_training(
    cfg: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] = _warn,
) -> list[SweepMember]:
    """Train the whole sweep described by cfg into cfg.out; resume from its checkpoint if asked.

    log gets progress notes, warn one-line warnings (rounded budget, cycled cache, rejected
    checkpoints). RunAlreadyFinished, before anything is read or written, if resume finds a
    finished run.
    """
    out = Path(cfg.out)
    if resume and (done := finished_tokens(cfg, out)) is not None:
        raise RunAlreadyFinished(f"run {out} is already finished ({done:,} tokens); nothing to do")
    device = init_from_env(cfg.train_config(None, None).device)
    base = cfg.train_config(None, None, device)
    if not resume and (out / CONFIG_FILE).exists():
        raise FileExistsError(
            f"{out} already holds a run; use --resume {out} or choose another --out"
        )
    barrier()
    main = is_main()
    # Read before the (slow) model or cache opens; a run with only bad checkpoints stops here.
    found = (
        load_latest_checkpoint(out / "checkpoints", warn if main else lambda _: None)
        if resume
        else None
    )
    store, model_name, available = open_activations(cfg, base)
    trained = base.total_steps * base.batch_size
    if main:
        # A batch size the user set makes the rounding their choice to check (a warning); one
        # derived from --tokens only needs saying.
        explicit = "batch_size" in cfg.train
        batch = "--batch-size" if explicit else "the batch size derived from it,"
        rounded = rounding_message(cfg.tokens, base.batch_size, ("--tokens", batch))
        if rounded:
            (warn if explicit else log)(rounded)
        if available and (cycled := cycling_message(f"the cache {cfg.cache}", available, trained)):
            warn(cycled)
    d_per_hook = store.d_in // len(cfg.data_hooks())
    members = build_members(cfg, d_per_hook, model_name, out)
    report = check_memory(members, base.batch_size, base.device, cfg.max_memory_gb)
    if main:
        ranks = world()[1]
        log(report + (f"; data parallel over {ranks} processes" if ranks > 1 else ""))
    configs = [cfg.train_config(arch, sparsity, device) for (_, arch, _, sparsity) in cfg.sweep()]
    run = Lockstep([m.sae for m in members], configs, store, [m.columns for m in members])
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        for m in members:
            m.directory.mkdir(parents=True, exist_ok=True)
    writers = [
        MetricsWriter(m.directory, m.name, cfg.loggers if main else [], enabled=main)
        for m in members
    ]
    # metrics.jsonl lines already on disk before this process's in-memory history begins.
    lines_before = list(found[0]["metrics_lines"]) if found else [0] * len(members)
    for w, n in zip(writers, lines_before, strict=True):
        w.truncate(n)
    if found:
        run.load_state_dict(found[0]["lockstep"])
        if main:
            log(f"resumed from {found[1]} at step {run.step}")
    else:
        run.prepare()
    written = [0] * len(members)

    def write_new_metrics() -> None:
        for i, (w, t) in enumerate(zip(writers, run.trainers, strict=True)):
            w.write(t.history[written[i] :])
            written[i] = len(t.history)

    def checkpoint() -> Path:
        for t in run.trainers:
            t.flush()
        write_new_metrics()
        if not main:  # every rank holds the same state; rank 0 writes it
            return checkpoint_path(out / "checkpoints", run.step)
        lines = [a + b for a, b in zip(lines_before, written, strict=True)]
        return save_checkpoint(
            out / "checkpoints", run.step, {"lockstep": run.state_dict(), "metrics_lines": lines}
        )

    log_every = min(c.log_every for c in configs)
    names = [m.name for m in members]
    with (
        _stop_on_signals() as stop,
        TrainProgress(trained, names, progress and main) as bar,
    ):
        bar.update(run.step * run.batch_size)
        while run.step < run.total_steps:
            run.train_step()
            refresh = run.step % log_every == 0
            if refresh:
                write_new_metrics()
            bar.update(run.step * run.batch_size, run.latest_metrics() if refresh else None)
            stopping = any_rank(bool(stop))
            if stopping or run.step % cfg.checkpoint_every == 0:
                path = checkpoint()
                if stopping:
                    raise TrainingInterrupted(
                        f"interrupted at step {run.step}; checkpoint {path}; continue with: saelab train --resume {out}"
                    )
        run.finish()
        bar.update(run.step * run.batch_size, run.latest_metrics())
    write_new_metrics()
    if not main:
        return members
    for m, t in zip(members, run.trainers, strict=True):
        m.sae.save(m.directory / "sae")
        plot_training_curves(
            m.directory / "metrics.jsonl", m.directory / "plots" / "training.png", m.name
        )
        m.final = final_metrics(m.directory / "metrics.jsonl", log_every, t.tracker.window)
    return members
