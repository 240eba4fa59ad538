"""Corpora, tokenise-and-pack, the activation store and the on-disk activation cache."""

from saelab.data.cache_format import (
    CacheCorruptError,
    CacheError,
    CacheIncompleteError,
    CacheMismatchError,
)
from saelab.data.cache_reader import ActivationCache
from saelab.data.cache_writer import write_cache
from saelab.data.corpora import BUILTIN_CORPORA, Corpus, CorpusNotFoundError, load_corpus
from saelab.data.packing import ContextStream, StreamPosition, sae_token_mask, special_token_ids
from saelab.data.sources import CacheSource, ModelSource
from saelab.data.split import is_heldout
from saelab.data.store import ActivationStore

__all__ = [
    "BUILTIN_CORPORA",
    "ActivationCache",
    "ActivationStore",
    "CacheCorruptError",
    "CacheError",
    "CacheIncompleteError",
    "CacheMismatchError",
    "CacheSource",
    "ContextStream",
    "Corpus",
    "CorpusNotFoundError",
    "ModelSource",
    "StreamPosition",
    "is_heldout",
    "load_corpus",
    "sae_token_mask",
    "special_token_ids",
    "write_cache",
]
