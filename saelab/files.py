"""Files saelab writes get the mode open() gives under the umask (0644 with umask 022).

safetensors' save_file writes through a private temp file and creates it 0600, whatever the
umask; every safetensors file saelab writes goes through save_safetensors to fix that.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def new_file_mode(directory: Path) -> int:
    """The permission bits a new file created with open() in `directory` gets (umask applied)."""
    probe = directory / f".mode-probe-{uuid.uuid4().hex}"
    probe.touch(exist_ok=False)
    try:
        return stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink()


def follow_umask(directory: Path) -> None:
    """Give the files directly in `directory` new_file_mode (another library wrote them 0600)."""
    mode = new_file_mode(directory)
    for path in directory.iterdir():
        if path.is_file():
            os.chmod(path, mode)


def fsync_path(path: Path) -> None:
    """Flush a written file (or a directory's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_safetensors(
    tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write `tensors` to `path` atomically (temp file, fsync, rename), with new_file_mode."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, new_file_mode(path.parent))
    fsync_path(tmp)
    tmp.replace(path)
    return path
