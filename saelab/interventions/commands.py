"""Bodies of `saelab steer / ablate / prompt / contrast`: load the SAE and its model, run, report."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saelab.analysis.dense import (
    DENSE_THRESHOLD,
    MIN_SAMPLE_TOKENS,
    DenseLatents,
    check_count,
    check_threshold,
    is_dense,
)
from saelab.data.corpora import load_corpus
from saelab.data.progress import token_progress
from saelab.evals.command import resolve_provenance
from saelab.formats.load import load_sae
from saelab.interventions.contrast import RANK_BY, rank_contrast
from saelab.interventions.documents import (
    DocumentActivations,
    document_activations,
    tokenize_documents,
    top_examples,
)
from saelab.interventions.explanations import find_features_db, load_explanations, load_frequencies
from saelab.interventions.prompt import analyze_prompt
from saelab.interventions.steering import SteeringResult, steer
from saelab.lm.hooks import resolve_hook
from saelab.lm.loading import load_model
from saelab.lm.model import LanguageModel
from saelab.sae import SAE


@dataclass(frozen=True)
class Target:
    """The SAE an intervention runs (a run, SAE directory or .npz) and where: model, hook, device."""

    path: Path
    model: str | None = None
    hook: str | None = None
    device: str | None = None
    dtype: str = "float32"

    def load(self) -> tuple[SAE, LanguageModel, str]:
        """(SAE, its model, hook name): model and hook default to the SAE's recorded provenance."""
        sae = load_sae(self.path)
        doing = f"run the SAE at {self.path} on a model"
        model, hook = resolve_provenance(sae, self.path, self.model, self.hook, doing)
        lm = load_model(model, device=self.device, dtype=self.dtype)
        resolve_hook(lm.model, hook)
        if lm.d_model != sae.cfg.d_in:
            raise ValueError(
                f"SAE d_in={sae.cfg.d_in} does not match the width {lm.d_model} of model {model!r}."
            )
        return sae.to(lm.device).eval(), lm, hook


def run_steer(
    target: Target,
    *,
    latents: dict[int, float],
    prompt: str,
    mode: str,
    max_new_tokens: int = 32,
    from_position: int | None = None,
    seed: int = 0,
    sample: bool = False,
) -> SteeringResult:
    """Load the SAE and model, then generate with and without the intervention."""
    sae, lm, hook = target.load()
    return steer(
        lm,
        sae,
        hook,
        prompt,
        latents,
        max_new_tokens=max_new_tokens,
        from_position=from_position,
        mode=mode,
        seed=seed,
        sample=sample,
    )


def run_prompt(
    target: Target,
    *,
    prompt: str,
    k: int = 5,
    features: Path | None = None,
    exclude_dense: bool = True,
    dense_threshold: float = DENSE_THRESHOLD,
) -> dict[str, Any]:
    """Top latents per token of a prompt, with explanations from features.sqlite when present;
    dense latents (saelab.analysis.dense) left out unless exclude_dense is False, listed apart."""
    check_threshold(dense_threshold)
    sae, lm, hook = target.load()
    db = features or find_features_db(target.path)
    frequency = load_frequencies(db)
    rows, dense = analyze_prompt(
        lm, sae, hook, prompt, k=k, frequency=frequency, source=str(db),
        threshold=dense_threshold, exclude_dense=exclude_dense,
    )  # fmt: skip
    explanations = load_explanations(db, (i for row in rows for i, _ in row.latents))
    for row in rows:
        row.explanations = {i: explanations[i] for i, _ in row.latents if i in explanations}
    return {
        "prompt": prompt,
        "model": lm.name,
        "hook": hook,
        "features": str(db) if db else None,
        "tokens": [row.to_dict() for row in rows],
        "dense": dense.to_dict(),
    }


def read_texts(spec: str, limit: int, text_field: str) -> list[str]:
    """Up to `limit` documents of a corpus (a .txt file holds one document per blank-line block)."""
    documents = load_corpus(spec, text_field=text_field).documents(split="all")
    texts = [text.strip() for text in itertools.islice(documents, limit)]
    if not texts:
        raise ValueError(f"Corpus {spec!r} has no non-empty documents.")
    return texts


def _contrast_frequency(
    docs: dict[str, DocumentActivations], frequency: list[float] | None, source: str
) -> tuple[list[float] | None, str | None]:
    """(firing frequency per latent, where it comes from): features.sqlite's when it has them;
    else the lower of the two corpora's token frequencies (dense = above the threshold in
    both), when each corpus has at least MIN_SAMPLE_TOKENS scored tokens; else (None, None)."""
    if frequency is not None:
        return frequency, source
    counts = [docs[side].n_scored for side in ("positive", "negative")]
    if min(counts) < MIN_SAMPLE_TOKENS:
        return None, None
    lower = torch.minimum(docs["positive"].frequency(), docs["negative"].frequency())
    return lower.tolist(), f"the tokens of both corpora ({counts[0]:,} and {counts[1]:,})"


def run_contrast(
    target: Target,
    *,
    positive: str,
    negative: str,
    top: int = 20,
    rank_by: str = "auroc",
    examples: int = 3,
    max_documents: int = 500,
    context_size: int = 128,
    batch_size: int = 8,
    text_field: str = "text",
    features: Path | None = None,
    exclude_dense: bool = True,
    dense_threshold: float = DENSE_THRESHOLD,
) -> dict[str, Any]:
    """Rank latents by specificity to the positive corpus (saelab.interventions.contrast);
    dense latents left out unless exclude_dense is False, listed apart (_contrast_frequency)."""
    if rank_by not in RANK_BY:
        raise ValueError(f"Unknown --rank-by {rank_by!r}; valid: {', '.join(RANK_BY)}.")
    check_threshold(dense_threshold)
    texts = {
        side: read_texts(spec, max_documents, text_field)
        for side, spec in (("positive", positive), ("negative", negative))
    }
    sae, lm, hook = target.load()
    tokens = {side: tokenize_documents(lm, docs, context_size) for side, docs in texts.items()}
    total = sum(len(ids) for docs in tokens.values() for ids in docs)
    done = 0
    docs = {}
    with token_progress("contrast", total) as on_progress:

        def advance(n: int) -> None:
            nonlocal done
            done += n
            on_progress(done, total)

        for side, ids in tokens.items():
            docs[side] = document_activations(
                lm, sae, hook, ids, batch_size=batch_size, on_progress=advance
            )
    db = features or find_features_db(target.path)
    frequency, source = _contrast_frequency(docs, load_frequencies(db), str(db))
    check_count(frequency, sae.cfg.d_sae, source)
    pos, neg = docs["positive"].maxima, docs["negative"].maxima
    dense = DenseLatents.among(
        frequency, (pos > 0).any(dim=0).nonzero().flatten().tolist(),
        threshold=dense_threshold, excluded=exclude_dense, source=source,
    )  # fmt: skip
    exclude = None
    if exclude_dense and frequency is not None:
        exclude = is_dense(torch.tensor(frequency, dtype=torch.float64), dense_threshold)
    rows = rank_contrast(pos, neg, top=top, rank_by=rank_by, exclude=exclude)
    explanations = load_explanations(db, (row.latent for row in rows))
    for row in rows:
        row.explanation = explanations.get(row.latent)
        row.examples = {
            side: top_examples(lm.tokenizer, docs[side], row.latent, examples) for side in docs
        }
    return {
        "model": lm.name,
        "hook": hook,
        "positive": {"corpus": positive, "documents": len(texts["positive"])},
        "negative": {"corpus": negative, "documents": len(texts["negative"])},
        "score": "max activation over a document's tokens",
        "rank_by": rank_by,
        "latents": [row.to_dict() for row in rows],
        "dense": dense.to_dict(),
    }


def run_attribute(
    paths: list[Path],
    *,
    prompt: str,
    target: str,
    metric: str = "logprob",
    contrast: str | None = None,
    top: int = 3,
    edges: int = 0,
    check: int = 0,
    model: str | None = None,
    device: str | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Load the SAEs (one model), attribute the metric to their latents and error nodes, and
    optionally ablate the top `check` latents to measure what the estimates predict."""
    from saelab.interventions.attribution import (
        attribute,
        attribution_report,
        check_ablations,
        make_metric,
    )

    for name, value in (("--top", top), ("--edges", edges), ("--check", check)):
        if value < (1 if name == "--top" else 0):
            raise ValueError(f"{name} must be ≥ {1 if name == '--top' else 0}, got {value}")
    if edges and len(paths) < 2:
        raise ValueError("--edges needs SAEs at two or more hooks (give several runs)")
    saes = [load_sae(path) for path in paths]
    for sae, path in zip(saes, paths, strict=True):
        if not sae.cfg.hook_name:
            raise ValueError(
                f"{path}: the SAE records no hook_name; attribute splices each SAE at the hook "
                "its cfg.json records (set hook_name there)"
            )
    models = {
        resolve_provenance(sae, path, model, None, f"attribute with the SAE at {path}")[0]
        for sae, path in zip(saes, paths, strict=True)
    }
    if len(models) > 1:
        raise ValueError(f"the SAEs come from different models {sorted(models)}; pass --model")
    lm = load_model(models.pop(), device=device, dtype=dtype)
    for sae, path in zip(saes, paths, strict=True):
        resolve_hook(lm.model, sae.cfg.hook_name)
        if lm.d_model != sae.cfg.d_in:
            raise ValueError(f"{path}: SAE d_in={sae.cfg.d_in} ≠ the model's width {lm.d_model}")
        sae.to(lm.device).eval()
    result = attribute(lm, saes, prompt, make_metric(lm, target, metric, contrast), edges=edges)
    checks = check_ablations(lm, result, prompt, check) if check else None
    runs = {id(sae): path for sae, path in zip(saes, paths, strict=True)}
    sources = [runs[id(site.sae)] for site in result.sites]
    explanations = [
        load_explanations(find_features_db(path), range(site.sae.cfg.d_sae))
        for site, path in zip(result.sites, sources, strict=True)
    ]
    return attribution_report(
        result, prompt, lm.name, sources, explanations, top=top, checks=checks
    )
