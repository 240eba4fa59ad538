"""Atomic checkpoints (temp file, fsync, rename) and finding the newest readable one."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

KEEP = 2


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, step: int, state: dict[str, Any]) -> Path:
    """Write step_{step}.pt atomically and keep only the newest KEEP checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:09d}.pt"
    tmp = directory / f".{final.name}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(final)
    _fsync_dir(directory)
    for old in sorted(directory.glob("step_*.pt"))[:-KEEP]:
        old.unlink()
    return final


def load_latest_checkpoint(directory: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads; unreadable (e.g. truncated) ones are skipped with a warning."""
    for path in sorted(directory.glob("step_*.pt"), reverse=True):
        try:
            return torch.load(path, map_location="cpu", weights_only=False), path
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            warnings.warn(
                f"{path}: unreadable checkpoint ({e}); trying the previous one", stacklevel=2
            )
    return None
