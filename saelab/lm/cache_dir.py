"""Where saelab keeps converted models: the user cache dir, or $SAELAB_CACHE_DIR if set."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV_VAR = "SAELAB_CACHE_DIR"


def user_cache_dir() -> Path:
    """saelab's cache root (created on demand); override it with the SAELAB_CACHE_DIR env var."""
    override = os.environ.get(CACHE_ENV_VAR)
    root = Path(override) if override else Path(platformdirs.user_cache_dir("saelab"))
    root.mkdir(parents=True, exist_ok=True)
    return root
