"""Latent explanations and firing frequencies read from a run's features.sqlite (written by
`saelab analyze` / `explain`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

FEATURES_FILE = "features.sqlite"


def find_features_db(run_or_sae: Path) -> Path | None:
    """features.sqlite of a run directory, or of the run holding an SAE dir (run/sae); else None."""
    folder = run_or_sae if run_or_sae.is_dir() else run_or_sae.parent
    for candidate in (folder / FEATURES_FILE, folder.parent / FEATURES_FILE):
        if candidate.is_file():
            return candidate
    return None


def load_explanations(db_path: Path | None, latents: Iterable[int]) -> dict[int, str]:
    """{latent: explanation} for the given latents that have one; {} when the file, the table or
    the column is missing (explanations are optional)."""
    wanted = sorted({int(i) for i in latents})
    if db_path is None or not Path(db_path).is_file() or not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as connection:
            rows = connection.execute(
                f"SELECT latent, explanation FROM latents WHERE latent IN ({marks}) "
                "AND explanation IS NOT NULL AND explanation != ''",
                wanted,
            ).fetchall()
    except sqlite3.Error:
        return {}
    return {int(latent): str(text) for latent, text in rows}


def load_frequencies(db_path: Path | None) -> list[float] | None:
    """Each latent's firing frequency from features.sqlite (`saelab analyze`), indexed by
    latent; None when the file, the table or the column is missing or a value is NULL."""
    if db_path is None or not Path(db_path).is_file():
        return None
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as connection:
            rows = connection.execute("SELECT latent, frequency FROM latents ORDER BY latent")
            rows = rows.fetchall()
    except sqlite3.Error:
        return None
    if (
        not rows
        or any(f is None for _, f in rows)
        or [i for i, _ in rows] != list(range(len(rows)))
    ):
        return None
    return [float(f) for _, f in rows]
