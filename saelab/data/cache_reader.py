"""Open an activation cache: validate the manifest, then read or memory-map shards with checksums."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saelab.data.cache_format import (
    MANIFEST,
    TOKENS_FILE,
    CacheIncompleteError,
    CacheMismatchError,
    check_config,
    check_size,
    read_manifest,
    read_npy_verified,
    storage_dtype,
    to_torch,
)


class ActivationCache:
    """A written activation cache; checks file sizes on open and sha256 on every shard read."""

    def __init__(
        self,
        path: str | Path,
        *,
        model: str | None = None,
        hooks: str | list[str] | None = None,
        d_in: int | None = None,
        allow_incomplete: bool = False,
    ) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.config: dict = self.manifest["config"]
        manifest_path = self.path / MANIFEST
        expected = {
            key: value for key, value in (("model", model), ("d_in", d_in)) if value is not None
        }
        check_config(manifest_path, self.config, expected)
        for hook in [hooks] if isinstance(hooks, str) else hooks or []:
            self.check_hook(hook)
        if not self.manifest["complete"] and not allow_incomplete:
            raise CacheIncompleteError(
                f"Cache {self.path} is incomplete ({self.manifest['tokens_written']} of "
                f"{self.config['tokens']} tokens written): rerun the same `saelab cache` command to "
                "finish it."
            )
        for shard in self.shards:
            for entry in shard["files"].values():
                check_size(self.path / entry["path"], entry["bytes"])

    @property
    def shards(self) -> list[dict]:
        """Manifest entries of the shards (tokens, files with path/sha256/bytes)."""
        return self.manifest["shards"]

    @property
    def hooks(self) -> list[str]:
        """Hook names stored in this cache."""
        return list(self.config["hooks"])

    @property
    def d_in(self) -> int:
        """Activation width."""
        return int(self.config["d_in"])

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of the activations."""
        return storage_dtype(self.config["dtype"])

    @property
    def tokens(self) -> int:
        """Number of stored token positions (all shards)."""
        return sum(shard["tokens"] for shard in self.shards)

    def check_hook(self, hook: str) -> str:
        """Raise CacheMismatchError unless this cache stores `hook`."""
        if hook not in self.config["hooks"]:
            raise CacheMismatchError(
                f"Cache manifest {self.path / MANIFEST} has no hook {hook!r}; it stores "
                f"{self.config['hooks']}."
            )
        return hook

    def default_hook(self) -> str:
        """The only hook of a single-hook cache (raises for multi-hook caches)."""
        if len(self.hooks) != 1:
            raise CacheMismatchError(
                f"Cache {self.path} stores several hooks {self.hooks}: pick one explicitly."
            )
        return self.hooks[0]

    def _entry(self, index: int, name: str) -> dict:
        """Manifest entry of one file of one shard."""
        if not 0 <= index < len(self.shards):
            raise IndexError(f"Cache {self.path} has {len(self.shards)} shards, not {index + 1}.")
        return self.shards[index]["files"][name]

    def read_array(self, index: int, name: str) -> np.ndarray:
        """Whole file `name` ('tokens' or a hook) of shard `index`, sha256-verified, in RAM."""
        entry = self._entry(index, name)
        return read_npy_verified(self.path / entry["path"], entry["sha256"], entry["bytes"])

    def read_shard(self, index: int, hook: str) -> torch.Tensor:
        """Activations (tokens, d_in) of one shard in the storage dtype, sha256-verified."""
        return to_torch(self.read_array(index, self.check_hook(hook)), self.dtype)

    def read_tokens(self, index: int) -> np.ndarray:
        """Token ids (int32) of the positions stored in one shard."""
        return self.read_array(index, TOKENS_FILE)

    def memmap(self, index: int, name: str) -> np.ndarray:
        """Read-only memory map of one shard file (size-checked; no checksum, no copy)."""
        entry = self._entry(index, name)
        path = self.path / entry["path"]
        check_size(path, entry["bytes"])
        return np.load(path, mmap_mode="r")

    def verify(self) -> None:
        """Check the sha256 of every file of every shard (raises CacheCorruptError naming it)."""
        for index, shard in enumerate(self.shards):
            for name in shard["files"]:
                self.read_array(index, name)
