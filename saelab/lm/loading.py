"""load_model: resolve a built-in alias, local dir, GGUF file or hub id into a LanguageModel."""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.lm.aliases import BUILTIN_MODELS
from saelab.lm.dtypes import parse_dtype
from saelab.lm.gguf import cached_gguf_model
from saelab.lm.hub import HubLookupError, check_hub_access
from saelab.lm.model import LanguageModel


class ModelNotFoundError(LookupError):
    """A model name that is neither a built-in alias, a local model/GGUF, nor loadable from the hub."""


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _not_found(name: str, reason: str) -> ModelNotFoundError:
    """An error naming the model and listing what can be loaded instead."""
    return ModelNotFoundError(
        f"Cannot load model {name!r}: {reason}. Valid: a built-in alias "
        f"({', '.join(sorted(BUILTIN_MODELS))}), a local directory with config.json "
        "(save_pretrained output), a .gguf file, or a Hugging Face hub id."
    )


def resolve_model_dir(name_or_path: str | Path) -> tuple[str, str | Path]:
    """(provenance name, what to pass to from_pretrained) for a model name or path."""
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        return name, BUILTIN_MODELS[name]()
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise _not_found(name, f"GGUF file {path} does not exist")
        return str(path.resolve()), cached_gguf_model(path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file():
            if len(ggufs) == 1:
                return str(path.resolve()), cached_gguf_model(ggufs[0])
            raise _not_found(
                name, f"directory {path} has no config.json and not exactly one .gguf file"
            )
        return str(path.resolve()), path
    if path.exists():
        raise _not_found(name, f"{path} is a file but not a .gguf file")
    return name, name


def load_model(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> LanguageModel:
    """Load a causal LM + tokenizer with named hook points (float32 on CUDA-or-CPU by default)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, source = resolve_model_dir(name_or_path)
    torch_dtype = parse_dtype(dtype)
    local_only = False
    if not isinstance(source, Path):  # a hub id: fail fast if it cannot be fetched now
        try:
            local_only = not check_hub_access(source, "model")
        except HubLookupError as error:
            raise _not_found(name, str(error)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, local_files_only=local_only
        )
    except (OSError, ValueError) as error:
        if isinstance(source, Path):
            raise
        raise _not_found(name, f"not a local path, and the hub lookup failed ({error})") from error
    model.to(torch.device(device) if device is not None else default_device())
    return LanguageModel(model, tokenizer, name)
