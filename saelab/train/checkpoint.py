"""Checkpoints that never unpickle: tensors in safetensors, the rest as JSON in its header.

One file per checkpoint, written atomically (temp file, fsync, rename); the newest KEEP stay.
Loading parses only the safetensors format and JSON, so a planted file cannot run code.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import Tensor

from saelab.files import fsync_path, save_safetensors

KEEP = 2
SUFFIX = ".safetensors"
FORMAT = "saelab-checkpoint/1"
# step_000000020.safetensors, and the pickled step_000000020.pt of saelab before this format.
NAME = re.compile(r"step_(\d+)\.(safetensors|pt)")


def checkpoint_path(directory: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives."""
    return directory / f"step_{step:09d}{SUFFIX}"


def _encode(value: Any, tensors: dict[str, Tensor]) -> Any:
    """JSON for value, with each tensor moved into `tensors` and replaced by a reference."""
    if isinstance(value, Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        # Non-string keys (an optimizer's integer parameter ids) must come back as they were.
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"checkpoint state: cannot store a {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of _encode."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_checkpoint(directory: Path, step: int, state: dict[str, Any]) -> Path:
    """Write the checkpoint of `step` atomically and keep only the newest KEEP checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    tensors: dict[str, Tensor] = {}
    metadata = {"format": FORMAT, "state": json.dumps(_encode(state, tensors))}
    save_safetensors(tensors, final, metadata)
    fsync_path(directory)
    for old in sorted(directory.glob(f"step_*{SUFFIX}"))[:-KEEP]:
        old.unlink()
    return final


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved at `path`; ValueError if it is not a complete saelab checkpoint."""
    if path.suffix != SUFFIX:
        raise ValueError("old-format (pickled) checkpoint; saelab does not unpickle them")
    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
            return _decode(json.loads(metadata["state"]), tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable checkpoint ({e})") from None


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def load_latest_checkpoint(
    directory: Path, warn: Callable[[str], None] = _warn
) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads, or None when there is none at all.

    Each rejected file (truncated, not a checkpoint, old pickled format) is named in a warning
    and the previous one is tried; ValueError when checkpoints exist but none of them loads.
    """
    found = [(int(m[1]), p) for p in directory.glob("step_*") if (m := NAME.fullmatch(p.name))]
    rejected = []
    for _, path in sorted(found, reverse=True):
        try:
            return read_checkpoint(path), path
        except ValueError as e:
            warn(f"{path}: {e}; trying the previous one")
            rejected.append(path.name)
    if rejected:
        raise ValueError(
            f"{directory}: no loadable checkpoint to resume from (rejected: {', '.join(rejected)}); "
            "delete these files to restart the run from step 0, or train into a new --out"
        )
    return None
