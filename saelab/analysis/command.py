"""The body of `saelab analyze`: resolve the run, stream held-out text, write features.sqlite."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from saelab.analysis.accumulator import AnalysisConfig
from saelab.analysis.database import FEATURES_FILE, FeatureDB
from saelab.analysis.figures import OVERVIEW_FILE, plot_latent_histogram, plot_overview
from saelab.analysis.logit_lens import model_logit_lens
from saelab.analysis.neighbours import decoder_neighbours
from saelab.analysis.rows import TokenText, latent_rows, overview
from saelab.analysis.stream import analyze_stream
from saelab.data.corpora import load_corpus
from saelab.data.progress import token_progress
from saelab.evals.command import DEFAULT_CONTEXT_SIZE, resolve_provenance
from saelab.evals.tokens import heldout_batches
from saelab.formats.hub import local_outputs
from saelab.formats.load import load_sae
from saelab.lm.hooks import resolve_hook
from saelab.lm.loading import load_model

LENS_TOKENS = 10
NEIGHBOURS = 10
DEFAULT_CORPUS = "python-stdlib"


def run_directory(path: Path) -> Path:
    """Where a run's outputs (features.sqlite, plots/) go: the run dir, the SAE dir, the folder
    of an SAE file, or a Hub reference's local outputs folder."""
    return local_outputs(path) or (path.parent if path.is_file() else path)


def recorded_corpus(path: Path) -> str | None:
    """The corpus recorded in the run's config.yaml (the run dir or, for a sweep member, its parent)."""
    for folder in (run_directory(path), run_directory(path).parent):
        config = folder / "config.yaml"
        if config.is_file():
            return (yaml.safe_load(config.read_text()) or {}).get("corpus")
    return None


def default_database(path: Path) -> Path:
    """features.sqlite inside the run (or SAE) directory (DESIGN.md "Files")."""
    return run_directory(path) / FEATURES_FILE


def run_analyze_command(
    *,
    path: Path,
    tokens: int,
    model: str | None = None,
    hook: str | None = None,
    corpus: str | None = None,
    batch_size: int = 8,
    context_size: int | None = None,
    device: str | None = None,
    dtype: str = "float32",
    out: Path | None = None,
    config: AnalysisConfig | None = None,
    histograms: int = 0,
) -> dict[str, Any]:
    """Analyse every latent of the SAE at path on `tokens` held-out tokens; write features.sqlite
    (and plots/features_overview.png plus `histograms` per-latent PNGs). Returns a summary."""
    start = time.perf_counter()
    config = config or AnalysisConfig()
    sae = load_sae(path)
    model_name, hook_name = resolve_provenance(sae, path, model, hook)
    source = load_corpus(corpus or recorded_corpus(path) or DEFAULT_CORPUS)
    lm = load_model(model_name, device=device, dtype=dtype)
    resolve_hook(lm.model, hook_name)
    context_size = context_size or sae.cfg.context_size or DEFAULT_CONTEXT_SIZE
    batches = heldout_batches(
        source, lm.tokenizer, tokens, context_size=context_size, batch_size=batch_size,
        seed=config.seed,
    )  # fmt: skip
    with token_progress("analysing", tokens) as on_progress:
        acc = analyze_stream(
            lm, sae, hook_name, batches, config, lambda done: on_progress(done, max(tokens, done))
        )
    pass_s = time.perf_counter() - start
    W_dec = sae.W_dec.detach()
    lens = model_logit_lens(lm.model, W_dec, LENS_TOKENS)
    neighbours = decoder_neighbours(W_dec, NEIGHBOURS)
    text = TokenText(lm.tokenizer)
    rows, examples = latent_rows(acc, text, lens, neighbours)
    out = out or default_database(path)
    with FeatureDB.create(out) as db:
        db.write_meta({
            "model": model_name, "hook": hook_name, "sae_path": str(path.resolve()),
            "architecture": sae.cfg.architecture, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
            "tokens": acc.n_tokens, "context_size": context_size, "window": config.window,
            "corpus": source.spec, "top_k": config.top_k, "quantiles": config.quantiles,
            "saelab_version": version("saelab"), "created": datetime.now(UTC).isoformat(),
            "overview": overview(acc, text),
        } | ({"target_hook": sae.cfg.target_hook_name} if sae.cfg.transcoder else {}))  # fmt: skip
        db.write_latents(rows)
        db.write_examples(examples)
        plots = out.parent / "plots"
        figures = [plot_overview(db, plots / OVERVIEW_FILE)]
        frequent = [r["latent"] for r in db.latents(order_by="frequency", limit=histograms)]
        figures += [plot_latent_histogram(db, i, plots / f"latent_{i}.png") for i in frequent]
    return {
        "database": str(out),
        "figures": [str(p) for p in figures],
        "tokens": acc.n_tokens,
        "d_sae": sae.cfg.d_sae,
        "dead": int((acc.n_fired == 0).sum()),
        "state_bytes": acc.nbytes(),
        "pass_s": round(pass_s, 2),
        "total_s": round(time.perf_counter() - start, 2),
    }
