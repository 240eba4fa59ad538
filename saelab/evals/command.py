"""The body of `saelab eval`: load SAE, model and held-out tokens; evaluate; write the files."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab.data.corpora import load_corpus
from saelab.data.progress import token_progress
from saelab.evals.absorption import (
    absorption,
    build_letter_set,
    load_letter_set,
    save_letter_set,
)
from saelab.evals.density import (
    DENSITY_PLOT_FILE,
    LATENT_STATS_FILE,
    density_histogram,
    plot_density,
    save_latent_stats,
)
from saelab.evals.metrics import MetricsAccumulator
from saelab.evals.probing import build_probing_set, sparse_probing
from saelab.evals.reference import find_reference, reference_path, save_reference
from saelab.evals.report import build_report, write_report
from saelab.evals.settings import EvalSettings
from saelab.evals.spliced import SplicedEvaluator
from saelab.evals.tokens import heldout_batches
from saelab.formats.hub import local_outputs
from saelab.formats.load import load_sae
from saelab.lm.dtypes import dtype_name
from saelab.lm.hooks import resolve_hook
from saelab.lm.loading import load_model
from saelab.lm.model import LanguageModel
from saelab.sae import SAE

EVAL_FILE = "eval.json"
DEFAULT_CONTEXT_SIZE = 128


def default_output(path: Path) -> Path:
    """eval.json inside the SAE/run directory, or beside an SAE file (e.g. params.npz); for a
    Hub reference, in its local outputs folder (saelab.formats.hub.local_outputs)."""
    folder = local_outputs(path)
    if folder is not None:
        return folder / EVAL_FILE
    return (path.parent if path.is_file() else path) / EVAL_FILE


def resolve_provenance(
    sae: SAE, path: Path, model: str | None, hook: str | None, doing: str | None = None
) -> tuple[str, str]:
    """(model, hook): the flags, else the SAE's recorded model_name / hook_name.

    `doing` names the task in the error (default: "evaluate PATH").
    """
    model = model or sae.cfg.model_name
    hook = hook or sae.cfg.hook_name
    missing = [
        f"--{flag} (the SAE config records no {field})"
        for flag, field, value in (("model", "model_name", model), ("hook", "hook_name", hook))
        if not value
    ]
    if missing:
        raise ValueError(f"Cannot {doing or f'evaluate {path}'}: pass {' and '.join(missing)}.")
    return model, hook


def spliced_hook(sae: SAE, hook: str) -> str:
    """Where the SAE's output replaces the LM's activation: `hook` (its input), or for a
    transcoder its target hook (SPEC §2.6), while it reads `hook`."""
    if not sae.cfg.transcoder:
        return hook
    if not sae.cfg.target_hook_name:
        raise ValueError(
            "this transcoder's cfg.json records no target_hook_name: the hook it predicts is "
            "unknown, so it cannot be spliced in"
        )
    return sae.cfg.target_hook_name


def run_eval_command(
    *,
    path: Path,
    model: str | None,
    hook: str | None,
    corpus: str,
    tokens: int,
    batch_size: int,
    context_size: int | None,
    device: str | None,
    dtype: str,
    seed: int,
    out: Path | None,
    reuse_reference: bool = True,
    probing_tokens: int = 0,
    absorption_words: int = 0,
) -> tuple[dict[str, Any], Path]:
    """Evaluate an SAE (SPEC §3); write eval.json, latent stats and density plot beside it.

    reuse_reference: read the SAE-independent passes of these settings from saelab's cache
    (computing and saving them the first time; saelab.evals.reference). probing_tokens > 0
    adds sparse probing on that many labelled held-out tokens (saelab.evals.probing) as
    eval.json's "probing"; absorption_words > 0 the first-letter absorption metric on that many
    vocabulary words (saelab.evals.absorption) as "absorption". Returns (the eval.json
    document, its path).
    """
    start = time.perf_counter()
    sae = load_sae(path)
    if absorption_words > 0 and sae.cfg.transcoder:
        raise ValueError(
            f"--absorption needs an SAE that reconstructs its input; {path} is a transcoder "
            "(its decoder writes another hook's space, where the letter probes do not live)"
        )
    model_name, hook_name = resolve_provenance(sae, path, model, hook)
    splice = spliced_hook(sae, hook_name)
    source = load_corpus(corpus)
    lm = load_model(model_name, device=device, dtype=dtype)
    resolve_hook(lm.model, hook_name)
    sae.to(lm.device)
    context_size = context_size or sae.cfg.context_size or DEFAULT_CONTEXT_SIZE
    settings = EvalSettings(source, tokens, context_size, batch_size, seed)
    eval_config = settings.eval_config(
        model_name, splice, str(lm.device), dtype_name(lm.dtype), input_hook=hook_name
    )
    batches = heldout_batches(
        source, lm.tokenizer, tokens, context_size=context_size, batch_size=batch_size, seed=seed
    )
    held = list(batches)  # small (token ids): checked against a cached reference's tokens
    ref_path, reference = find_reference(lm, splice, eval_config, held, reuse_reference)
    evaluator = SplicedEvaluator(
        sae,
        lm,
        splice,
        record_reference=ref_path is not None and reference is None,
        input_hook=hook_name,
    )
    done = 0
    with token_progress("evaluating", tokens) as on_progress:
        for batch, reference_batch in zip(held, reference or [None] * len(held), strict=True):
            done += evaluator.update(batch, reference_batch)
            on_progress(done, max(tokens, done))
    metrics = evaluator.result()
    if evaluator.reference_batches is not None:
        save_reference(ref_path, evaluator.reference_batches)
    sections = {}
    if probing_tokens > 0:
        documents = source.documents(seed=seed, split="heldout")
        sections["probing"] = probe(sae, lm, hook_name, documents, probing_tokens, context_size)
    if absorption_words > 0:
        sections["absorption"] = first_letter_absorption(
            sae, lm, hook_name, absorption_words, seed, reuse_reference
        )
    return save_eval(
        out or default_output(path),
        metrics=metrics,
        tensor=evaluator.tensor,
        sae=sae,
        sae_path=path,
        eval_config=eval_config,
        started=start,
        sections=sections,
    )


def probe(
    sae: SAE, lm: LanguageModel, hook: str, documents: Iterator[str], tokens: int, context: int
) -> dict[str, Any]:
    """eval.json's "probing": sparse probing accuracies per task and k (SPEC §3)."""
    with token_progress("probing", tokens) as on_progress:
        data = build_probing_set(
            lm, hook, documents, tokens, context, lambda n: on_progress(n, tokens)
        )

    return {"tokens": len(data.labels), "tasks": sparse_probing(cpu_encoder(sae), data)}


def first_letter_absorption(
    sae: SAE, lm: LanguageModel, hook: str, words: int, seed: int, reuse: bool
) -> dict[str, Any]:
    """eval.json's "absorption": the first-letter absorption metric (SPEC §3). With `reuse`,
    the words' activations (SAE-independent) are read from and saved to saelab's cache."""
    settings = {
        "task": "first-letter absorption",
        "words": words,
        "seed": seed,
        "device": str(lm.device),
        "dtype": dtype_name(lm.dtype),
    }
    path = reference_path(lm, hook, settings) if reuse else None
    data = load_letter_set(path) if path is not None else None
    if data is None:
        with token_progress("absorption prompts", words, unit="words") as on_progress:
            data = build_letter_set(
                lm, hook, words, seed, on_progress=lambda n: on_progress(n, words)
            )
        if path is not None:
            save_letter_set(path, data)
    return absorption(cpu_encoder(sae), sae.W_dec.detach().cpu(), data)


def cpu_encoder(sae: SAE) -> Callable[[Tensor], Tensor]:
    """x (N, d) on the CPU → the SAE's codes (N, n) float32 on the CPU, without a graph."""

    @torch.no_grad()
    def encode(x: Tensor) -> Tensor:
        return sae.encode(x.to(sae.device, sae.W_dec.dtype)).float().cpu()

    return encode


def save_eval(
    out: Path,
    *,
    metrics: dict[str, float],
    tensor: MetricsAccumulator,
    sae: SAE,
    sae_path: Path,
    eval_config: dict[str, Any],
    started: float,
    sections: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Write eval.json at `out` and the latent stats + density plot beside it.

    `tensor` is the SAE's accumulator (per-latent statistics); `started` the perf_counter()
    value at which the evaluation began; `sections` extra top-level parts (e.g. "probing").
    Returns (the eval.json document, its path).
    """
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    n_tokens = int(metrics["n_tokens"])
    freq = tensor.firing_frequency()
    save_latent_stats(folder / LATENT_STATS_FILE, freq, tensor.mean_activation(), n_tokens)
    histogram = density_histogram(freq, n_tokens)
    plot_density(
        folder / DENSITY_PLOT_FILE,
        histogram,
        f"{sae.cfg.architecture} d_sae={sae.cfg.d_sae} · {eval_config['model']} "
        f"{eval_config['hook']} · {n_tokens:,} tokens",
    )
    report = build_report(
        metrics=metrics,
        eval_config=eval_config,
        sae={
            "path": str(sae_path.resolve()),
            "architecture": sae.cfg.architecture,
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
        },
        feature_density=histogram,
        files={"latent_stats": LATENT_STATS_FILE, "feature_density_plot": DENSITY_PLOT_FILE},
        eval_time_s=time.perf_counter() - started,
    ) | (sections or {})
    return report, write_report(out, report)
