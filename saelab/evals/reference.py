"""The SAE-independent passes of the spliced evaluation (SPEC §3), computed once and cached.

For one model, hook and held-out token set, the clean and the zero-ablation runs give the same
numbers for every SAE: CE clean, CE zero, and what KL(p_clean ‖ p_sae) needs of the clean
next-token distribution p. With a linear head, logits z = W h + b, so per prediction
Σ_v p_v log p_sae,v = (Wᵀp)·h + p·b − logsumexp(z), and

    KL = (Σ_v p_v log p_v − p·b) − (Wᵀp)·h + logsumexp(z),

which needs only one scalar and the d-vector Wᵀp per prediction, not p itself. With the
reference, an SAE's evaluation runs the layers before the hook and, with x̂ spliced in, the
layers after it: one pass instead of three. Models whose head soft-caps its logits (Gemma 2)
have no such form and always run all three passes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saelab.files import fsync_path, save_safetensors
from saelab.lm.cache_dir import user_cache_dir
from saelab.lm.model import LanguageModel

REFERENCE_DIR = "eval-reference"
FORMAT_VERSION = 1
# References kept in reference_dir(), least recently used pruned first: about 24 settings of
# gemma-3-270m at 8,192 eval tokens (≈42 MB each).
KEEP_BYTES = 1 << 30


@dataclass
class ReferenceBatch:
    """The SAE-independent sums of one token batch, and Wᵀp of each counted prediction."""

    input_ids: Tensor  # (batch, seq) token ids, as evaluated
    ce_clean: float  # Σ −log p_clean(target) over the batch's counted predictions
    ce_zero: float  # the same with zeros at the hook
    kl_offset: float  # Σ (Σ_v p_v log p_v − p·b) over the counted predictions
    clean_dual: Tensor  # (predictions, d) float64: Wᵀp of each counted prediction, in order


def supports_reference(model: nn.Module) -> bool:
    """Whether the head is linear (logits = W h + b, no soft-capping), so KL has the cached form."""
    head = model.get_output_embeddings()
    linear = isinstance(head, nn.Linear)
    return linear and getattr(model.config, "final_logit_softcapping", None) is None


def model_fingerprint(model: nn.Module) -> str:
    """A digest of every parameter's shape and a strided sample of its values (any fine-tune
    changes it; reading every weight would cost more than a small evaluation)."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        sample = param.detach().flatten()[::4099].float().cpu().numpy().tobytes()
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(sample)
    return digest.hexdigest()[:24]


def reference_path(lm: LanguageModel, hook: str, settings: dict[str, Any]) -> Path:
    """Where the reference of (model weights, hook, eval settings incl. device and dtype) lives."""
    key = {
        "format": FORMAT_VERSION,
        "model": lm.name,
        "weights": model_fingerprint(lm.model),
        "hook": hook,
        **settings,
    }
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return reference_dir() / f"{name}.safetensors"


def reference_dir() -> Path:
    """Where references are kept: eval-reference/ in saelab's cache root (SAELAB_CACHE_DIR)."""
    return user_cache_dir() / REFERENCE_DIR


def save_reference(path: Path, batches: list[ReferenceBatch]) -> Path:
    """Write a reference atomically (safetensors: ids and Wᵀp per batch; the sums as metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    sums = []
    for i, batch in enumerate(batches):
        tensors[f"input_ids.{i}"] = batch.input_ids.cpu().contiguous()
        tensors[f"clean_dual.{i}"] = batch.clean_dual.cpu().contiguous()
        sums.append([batch.ce_clean, batch.ce_zero, batch.kl_offset])
    save_safetensors(tensors, path, {"sums": json.dumps(sums), "batches": str(len(batches))})
    fsync_path(path.parent)
    prune_references(path.parent, KEEP_BYTES)
    return path


def prune_references(directory: Path, keep_bytes: int) -> list[Path]:
    """Delete the least recently used references beyond keep_bytes in all (the newest is always
    kept); returns the deleted paths. A reference is used when written or reused."""
    files = sorted(directory.glob("*.safetensors"), key=lambda f: f.stat().st_mtime, reverse=True)
    total, deleted = 0, []
    for i, f in enumerate(files):
        total += f.stat().st_size
        if i > 0 and total > keep_bytes:
            f.unlink(missing_ok=True)
            deleted.append(f)
    return deleted


def load_reference(path: Path, device: torch.device) -> list[ReferenceBatch] | None:
    """The reference saved at `path` (None when there is none or it cannot be read)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            sums = json.loads(f.metadata()["sums"])
            return [
                ReferenceBatch(
                    input_ids=f.get_tensor(f"input_ids.{i}").to(device),
                    ce_clean=ce_clean,
                    ce_zero=ce_zero,
                    kl_offset=kl_offset,
                    clean_dual=f.get_tensor(f"clean_dual.{i}").to(device),
                )
                for i, (ce_clean, ce_zero, kl_offset) in enumerate(sums)
            ]
    except (SafetensorError, KeyError, ValueError, OSError):
        return None


def matching_reference(
    path: Path, batches: list[Tensor], device: torch.device
) -> list[ReferenceBatch] | None:
    """The reference at `path` if it was made on exactly these token batches (else None: the
    corpus changed under the same name, or the file is unreadable)."""
    reference = load_reference(path, device)
    if reference is None or len(reference) != len(batches):
        return None
    same = all(
        ref.input_ids.shape == ids.shape and torch.equal(ref.input_ids.cpu(), ids.cpu())
        for ref, ids in zip(reference, batches, strict=True)
    )
    return reference if same else None


def find_reference(
    lm: LanguageModel, hook: str, settings: dict[str, Any], batches: list[Tensor], reuse: bool
) -> tuple[Path | None, list[ReferenceBatch] | None]:
    """(where the reference of this evaluation lives, the saved one if it matches `batches`).

    (None, None) when references are not reused or the model's head has no cached form; a path
    with None: evaluate all three passes, recording the reference to save at that path.
    """
    if not (reuse and supports_reference(lm.model)):
        return None, None
    path = reference_path(lm, hook, settings)
    reference = matching_reference(path, batches, lm.device)
    if reference is not None:
        path.touch()  # most recently used: pruned last
    return path, reference
