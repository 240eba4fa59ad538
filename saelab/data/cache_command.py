"""The body of `saelab cache`: load the model and corpus, write the cache with a progress bar."""

from __future__ import annotations

from pathlib import Path

from saelab.data.cache_writer import check_cache_options, write_cache
from saelab.data.corpora import load_corpus
from saelab.data.progress import token_progress
from saelab.lm.hooks import resolve_hook
from saelab.lm.loading import load_model


def run_cache_command(
    *,
    model: str,
    hooks: list[str],
    corpus: str,
    tokens: int,
    out: Path,
    context_size: int,
    batch_size: int,
    shard_tokens: int,
    device: str | None,
    dtype: str,
    model_dtype: str,
    seed: int,
    split: str,
    include_special_tokens: bool,
    text_field: str,
    dataset_split: str,
    heldout_fraction: float,
) -> dict:
    """Write (or resume) an activation cache; return a summary for printing."""
    check_cache_options(tokens, shard_tokens, batch_size, context_size, split, dtype)
    source = load_corpus(
        corpus,
        text_field=text_field,
        dataset_split=dataset_split,
        heldout_fraction=heldout_fraction,
    )
    lm = load_model(model, device=device, dtype=model_dtype)
    for hook in hooks:
        resolve_hook(lm.model, hook)
    with token_progress("caching", tokens) as on_progress:
        cache = write_cache(
            lm, hooks, source, out, tokens, context_size=context_size, batch_size=batch_size,
            shard_tokens=shard_tokens, dtype=dtype, seed=seed, split=split,
            exclude_special_tokens=not include_special_tokens, on_progress=on_progress,
        )  # fmt: skip
    return {
        "out": str(cache.path),
        "model": cache.config["model"],
        "hooks": cache.hooks,
        "d_in": cache.d_in,
        "dtype": cache.config["dtype"],
        "tokens": cache.tokens,
        "shards": len(cache.shards),
        "exhausted": cache.manifest["exhausted"],
    }
