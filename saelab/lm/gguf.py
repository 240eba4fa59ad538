"""Convert a GGUF checkpoint once into a safetensors model dir in the cache, so later loads are fast."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import torch

from saelab.files import follow_umask
from saelab.lm.cache_dir import user_cache_dir


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (bounded memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_dir(stem: str, sha256: str) -> Path:
    """Cache folder of the converted model for a GGUF file with this name stem and content hash."""
    return user_cache_dir() / "models" / f"{stem}-{sha256[:16]}"


def _dequantize_option() -> dict:
    """from_pretrained kwargs asking for dense weights (transformers < 5 always de-quantizes)."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """De-quantize a GGUF file into a float32 safetensors model + tokenizer dir at `target`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if target.is_dir():
        return target
    folder, name = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, config=config, dtype=torch.float32, **_dequantize_option()
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The weights are dense now; drop the GGUF quantizer so save_pretrained writes plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}-{uuid.uuid4().hex[:12]}"
    staging.mkdir()  # not mkdtemp, which makes it 0700: the folder and files follow the umask
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        follow_umask(staging)  # transformers writes its safetensors through safetensors (0600)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent conversion that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def cached_gguf_model(gguf_path: Path) -> Path:
    """The converted model dir for a GGUF file, converting it on first use."""
    return convert_gguf(gguf_path, converted_dir(gguf_path.stem, file_sha256(gguf_path)))
