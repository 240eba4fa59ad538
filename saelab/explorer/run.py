"""Find a run's features.sqlite (and what the live tools need) from a RUN argument."""

from __future__ import annotations

from pathlib import Path

from saelab.analysis.command import default_database


def database_path(path: Path) -> Path:
    """The feature database of a run: path itself if it is a .sqlite file, else
    RUN/features.sqlite; raises naming the file and the command that creates it."""
    db = path if path.suffix == ".sqlite" else default_database(path)
    if not db.is_file():
        raise ValueError(f"{db}: no feature database; create it with `saelab analyze {path}`.")
    return db
