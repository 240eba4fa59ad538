"""Language models with TransformerLens-named hook points (model loading, GGUF, aliases)."""

from saelab.lm.cache_dir import user_cache_dir
from saelab.lm.hooks import HOOK_KINDS, HookNotFoundError, UnsupportedModelError
from saelab.lm.intervene import record_activations, replace_activation
from saelab.lm.loading import ModelNotFoundError, load_model
from saelab.lm.model import LanguageModel

__all__ = [
    "HOOK_KINDS",
    "HookNotFoundError",
    "LanguageModel",
    "ModelNotFoundError",
    "UnsupportedModelError",
    "load_model",
    "record_activations",
    "replace_activation",
    "user_cache_dir",
]
