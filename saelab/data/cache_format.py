"""On-disk format of the activation cache: manifest.json + one folder of .npy files per shard.

Layout of a cache directory:
    manifest.json                  format, config (model, hooks, d_in, dtype, corpus, ...),
                                   shards (tokens, per-file sha256 and size), resume point
    shard_00000/tokens.npy         int32 token id of each stored position
    shard_00000/<hook>.npy         (tokens, d_in) activations, one file per hook
Files are plain .npy (memory-mappable with numpy.load(mmap_mode="r")). bfloat16 activations
are stored as their int16 bit patterns (numpy has no bfloat16) and viewed back on read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from saelab.lm.dtypes import dtype_name, parse_dtype

FORMAT = "saelab-activation-cache"
VERSION = 1
MANIFEST = "manifest.json"
TOKENS_FILE = "tokens"
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
_MAX_HEADER = 1 << 17
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class CacheError(ValueError):
    """Base class of activation-cache errors; messages name the offending file."""


class CacheCorruptError(CacheError):
    """A shard file that is missing, truncated, or whose checksum does not match the manifest."""


class CacheMismatchError(CacheError):
    """A cache whose manifest does not match what the caller expects (model, hook, d_in, ...)."""


class CacheIncompleteError(CacheError):
    """A cache whose writing run has not finished (rerun the same `saelab cache` command)."""


def storage_dtype(name: str) -> torch.dtype:
    """Validate a cache storage dtype name and return the torch dtype."""
    dtype = parse_dtype(name)
    if dtype_name(dtype) not in STORAGE_DTYPES:
        raise ValueError(f"Unsupported cache dtype {name!r}; valid: {', '.join(STORAGE_DTYPES)}.")
    return dtype


def to_numpy(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """CPU numpy array of a tensor in the storage dtype (bfloat16 as int16 bit patterns)."""
    converted = tensor.detach().to(device="cpu", dtype=dtype)
    if dtype == torch.bfloat16:
        converted = converted.view(torch.int16)
    return converted.numpy()


def to_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Tensor view of a stored array (undoes the bfloat16 bit-pattern encoding)."""
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


class _HashingWriter:
    """A write-only file wrapper that also computes the sha256 and size of what is written."""

    def __init__(self, handle: io.BufferedWriter) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


def write_npy(path: Path, array: np.ndarray) -> dict[str, object]:
    """Write an array as .npy and fsync it; return {'sha256', 'bytes'} for the manifest."""
    with path.open("wb") as handle:
        writer = _HashingWriter(handle)
        np.lib.format.write_array(writer, np.ascontiguousarray(array), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    return {"sha256": writer.digest.hexdigest(), "bytes": writer.size}


def check_size(path: Path, expected: int) -> None:
    """Raise CacheCorruptError unless the file exists with exactly `expected` bytes."""
    if not path.is_file():
        raise CacheCorruptError(f"Cache shard file {path} is missing (listed in the manifest).")
    size = path.stat().st_size
    if size != expected:
        raise CacheCorruptError(
            f"Cache shard file {path} is truncated or damaged: {size} bytes, manifest says {expected}."
        )


def read_npy_verified(path: Path, sha256: str, size: int) -> np.ndarray:
    """Read a whole .npy file, verify size and sha256 against the manifest, return the array."""
    check_size(path, size)
    data = bytearray(size)
    with path.open("rb") as handle:
        handle.readinto(data)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CacheCorruptError(
            f"Cache shard file {path} is corrupt: its sha256 does not match the manifest."
        )
    header = io.BytesIO(memoryview(data)[:_MAX_HEADER])
    version = np.lib.format.read_magic(header)
    read_header = _HEADER_READERS.get(version)
    if read_header is None:
        raise CacheCorruptError(f"Cache shard file {path} has unsupported .npy version {version}.")
    shape, fortran, dtype = read_header(header)
    if fortran:
        raise CacheCorruptError(
            f"Cache shard file {path} is Fortran-ordered; saelab writes C order."
        )
    count = int(np.prod(shape))
    return np.frombuffer(data, dtype=dtype, count=count, offset=header.tell()).reshape(shape)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temp file, fsync, and rename over `path` (never a half-written file)."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def read_manifest(directory: Path) -> dict:
    """Load and sanity-check a cache manifest; errors name the file."""
    path = directory / MANIFEST
    if not path.is_file():
        raise CacheError(f"{directory} is not a saelab activation cache: {path} does not exist.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CacheCorruptError(f"Cache manifest {path} is not valid JSON ({error}).") from error
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CacheError(
            f"Cache manifest {path} has format {manifest.get('format')!r} version "
            f"{manifest.get('version')!r}; this saelab reads {FORMAT!r} version {VERSION}."
        )
    return manifest


def check_config(path: Path, found: dict, expected: dict) -> None:
    """Raise CacheMismatchError naming the first field where a manifest's config differs."""
    for field, value in expected.items():
        if found.get(field) != value:
            raise CacheMismatchError(
                f"Cache manifest {path} does not match: {field} is {found.get(field)!r} there, "
                f"but {value!r} was requested."
            )
