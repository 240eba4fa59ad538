"""The one error type for unreadable or inconsistent SAE files."""

from __future__ import annotations

from pathlib import Path


class SAEFileError(ValueError):
    """An SAE file is missing, corrupt or inconsistent; the message names the file and problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem
