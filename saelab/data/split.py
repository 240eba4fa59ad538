"""Deterministic train / held-out split of documents by content hash (independent of order and seed)."""

from __future__ import annotations

import hashlib

SPLITS = ("train", "heldout", "all")
DEFAULT_HELDOUT_FRACTION = 0.05


def is_heldout(text: str, fraction: float = DEFAULT_HELDOUT_FRACTION) -> bool:
    """Whether a document belongs to the held-out split (same answer for the same text, always)."""
    digest = hashlib.sha256(text.encode("utf-8", errors="replace")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def check_split(split: str) -> str:
    """Validate a split name."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid: {', '.join(SPLITS)}.")
    return split


def in_split(text: str, split: str, fraction: float) -> bool:
    """Whether a document belongs to `split` ('train', 'heldout' or 'all')."""
    if split == "all":
        return True
    return is_heldout(text, fraction) == (split == "heldout")
