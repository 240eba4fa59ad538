"""Bodies of `saelab steer / ablate / prompt / contrast`: load the SAE and its model, run, report."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelab.data.corpora import load_corpus
from saelab.data.progress import token_progress
from saelab.evals.command import resolve_provenance
from saelab.formats.load import load_sae
from saelab.interventions.contrast import RANK_BY, rank_contrast
from saelab.interventions.documents import document_activations, tokenize_documents, top_examples
from saelab.interventions.explanations import find_features_db, load_explanations
from saelab.interventions.prompt import top_latents_per_token
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


def _explanations(
    target: Target, features: Path | None, latents: Iterable[int]
) -> tuple[Path | None, dict[int, str]]:
    """(features.sqlite used, {latent: explanation}): --features, else the run's database."""
    db = features or find_features_db(target.path)
    return db, load_explanations(db, latents)


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
    target: Target, *, prompt: str, k: int = 5, features: Path | None = None
) -> dict[str, Any]:
    """Top latents per token of a prompt, with explanations from features.sqlite when present."""
    sae, lm, hook = target.load()
    rows = top_latents_per_token(lm, sae, hook, prompt, k=k)
    db, explanations = _explanations(target, features, (i for row in rows for i, _ in row.latents))
    for row in rows:
        row.explanations = {i: explanations[i] for i, _ in row.latents if i in explanations}
    return {
        "prompt": prompt,
        "model": lm.name,
        "hook": hook,
        "features": str(db) if db else None,
        "tokens": [row.to_dict() for row in rows],
    }


def read_texts(spec: str, limit: int, text_field: str) -> list[str]:
    """Up to `limit` documents of a corpus (a .txt file holds one document per blank-line block)."""
    documents = load_corpus(spec, text_field=text_field).documents(split="all")
    texts = [text.strip() for text in itertools.islice(documents, limit)]
    if not texts:
        raise ValueError(f"Corpus {spec!r} has no non-empty documents.")
    return texts


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
) -> dict[str, Any]:
    """Rank latents by specificity to the positive corpus (saelab.interventions.contrast)."""
    if rank_by not in RANK_BY:
        raise ValueError(f"Unknown --rank-by {rank_by!r}; valid: {', '.join(RANK_BY)}.")
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
    rows = rank_contrast(docs["positive"].maxima, docs["negative"].maxima, top=top, rank_by=rank_by)
    _, explanations = _explanations(target, features, (row.latent for row in rows))
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
    }
