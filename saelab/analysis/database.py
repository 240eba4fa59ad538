"""features.sqlite: per-latent statistics, examples and explanations (the shared contract).

Tables: meta (key → JSON value), latents (one row per latent; JSON text columns), examples
(top and quantile examples with per-token activations) and latents_fts (FTS5 over top tokens
and explanations, kept in sync by set_explanation). Written by `saelab analyze`; read by the
dashboard and the web app; autointerp fills explanation / score columns. One connection is
shared by threads under a lock (the web app reads from a thread pool).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FEATURES_FILE = "features.sqlite"
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE latents (
    latent INTEGER PRIMARY KEY, frequency REAL, mean_activation REAL, max_activation REAL,
    n_fired INTEGER, histogram TEXT, logit_pos TEXT, logit_neg TEXT, neighbours TEXT,
    top_tokens TEXT, explanation TEXT, score_detection REAL, score_fuzzing REAL
);
CREATE TABLE examples (
    latent INTEGER, kind TEXT, rank INTEGER, quantile INTEGER, max_activation REAL,
    tokens TEXT, activations TEXT, max_index INTEGER
);
CREATE INDEX examples_latent ON examples (latent, kind, rank);
CREATE VIRTUAL TABLE latents_fts USING fts5(latent UNINDEXED, top_tokens, explanation);
"""
LATENT_COLUMNS = (
    "latent", "frequency", "mean_activation", "max_activation", "n_fired", "histogram",
    "logit_pos", "logit_neg", "neighbours", "top_tokens", "explanation", "score_detection",
    "score_fuzzing",
)  # fmt: skip
EXAMPLE_COLUMNS = (
    "latent", "kind", "rank", "quantile", "max_activation", "tokens", "activations", "max_index",
)  # fmt: skip
JSON_COLUMNS = ("histogram", "logit_pos", "logit_neg", "neighbours", "tokens", "activations")
ORDERS = ("latent", "frequency", "mean_activation", "max_activation", "n_fired")


class FeatureDBError(ValueError):
    """A missing or malformed features.sqlite, or a bad query; the message names the file."""


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    """A row as a dict with its JSON text columns decoded."""
    out = dict(row)
    for key in JSON_COLUMNS:
        if key in out and out[key] is not None:
            out[key] = json.loads(out[key])
    return out


def _fts_query(text: str) -> str | None:
    """An FTS5 query matching every word of `text` as a prefix (None when it has no words)."""
    words = re.findall(r"\w+", text)
    return " ".join(f'"{word}"*' for word in words) if words else None


class FeatureDB:
    """features.sqlite reader/writer: FeatureDB.create(path) for a new file, FeatureDB(path) to open."""

    def __init__(self, path: str | Path, *, _create: bool = False) -> None:
        self.path = Path(path)
        if not _create and not self.path.is_file():
            raise FeatureDBError(
                f"{self.path}: no feature database here; create it with `saelab analyze RUN`."
            )
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        if _create:
            self._conn.executescript(SCHEMA)
        else:
            self._check_schema()

    @classmethod
    def create(cls, path: str | Path) -> FeatureDB:
        """A new, empty database at path (an existing file there is replaced)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        return cls(path, _create=True)

    def _check_schema(self) -> None:
        try:
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as error:
            raise FeatureDBError(f"{self.path}: not an SQLite database ({error}).") from error
        missing = {"meta", "latents", "examples", "latents_fts"} - tables
        if missing:
            raise FeatureDBError(
                f"{self.path}: not a saelab feature database (missing tables {sorted(missing)})."
            )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> FeatureDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------
    def write_meta(self, values: dict[str, Any]) -> None:
        """Insert or replace meta keys (values stored as JSON)."""
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in values.items()],
            )

    def write_latents(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert latent rows (dicts keyed by LATENT_COLUMNS; JSON columns as Python values)."""
        rows = [self._encoded(row, LATENT_COLUMNS) for row in rows]
        with self._lock, self._conn:
            marks = ", ".join("?" * len(LATENT_COLUMNS))
            self._conn.executemany(f"INSERT INTO latents VALUES ({marks})", rows)
            self._conn.executemany(
                "INSERT INTO latents_fts (latent, top_tokens, explanation) VALUES (?, ?, ?)",
                [(r[0], r[9] or "", r[10] or "") for r in rows],
            )

    def write_examples(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert example rows (dicts keyed by EXAMPLE_COLUMNS)."""
        rows = [self._encoded(row, EXAMPLE_COLUMNS) for row in rows]
        with self._lock, self._conn:
            marks = ", ".join("?" * len(EXAMPLE_COLUMNS))
            self._conn.executemany(f"INSERT INTO examples VALUES ({marks})", rows)

    @staticmethod
    def _encoded(row: dict[str, Any], columns: tuple[str, ...]) -> tuple:
        return tuple(
            json.dumps(row.get(c)) if c in JSON_COLUMNS and row.get(c) is not None else row.get(c)
            for c in columns
        )

    def set_explanation(self, latent: int, text: str) -> None:
        """Set a latent's explanation (and its full-text index entry)."""
        with self._lock, self._conn:
            self._require(latent)
            self._conn.execute(
                "UPDATE latents SET explanation = ? WHERE latent = ?", (text, latent)
            )
            self._conn.execute(
                "UPDATE latents_fts SET explanation = ? WHERE latent = ?", (text, latent)
            )

    def set_scores(
        self, latent: int, detection: float | None = None, fuzzing: float | None = None
    ) -> None:
        """Set a latent's autointerp scores (None leaves a score unchanged)."""
        with self._lock, self._conn:
            self._require(latent)
            self._conn.execute(
                "UPDATE latents SET score_detection = COALESCE(?, score_detection), "
                "score_fuzzing = COALESCE(?, score_fuzzing) WHERE latent = ?",
                (detection, fuzzing, latent),
            )

    def _require(self, latent: int) -> None:
        if (
            self._conn.execute("SELECT 1 FROM latents WHERE latent = ?", (latent,)).fetchone()
            is None
        ):
            raise FeatureDBError(
                f"{self.path}: no latent {latent} (valid: 0..{self._count() - 1})."
            )

    # ---- reading -------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """All meta keys with decoded values."""
        with self._lock:
            rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def _count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM latents").fetchone()[0]

    def count(self) -> int:
        """Number of latents."""
        with self._lock:
            return self._count()

    def latent(self, latent: int) -> dict[str, Any] | None:
        """One latent's row (JSON decoded) plus "examples" (top first, then quantiles), or None."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM latents WHERE latent = ?", (latent,)).fetchone()
            if row is None:
                return None
            examples = self._conn.execute(
                "SELECT * FROM examples WHERE latent = ? ORDER BY kind = 'quantile', "
                "quantile DESC, rank",
                (latent,),
            ).fetchall()
        out = _decode(row)
        out["examples"] = [_decode(e) for e in examples]
        return out

    def latents(
        self,
        order_by: str = "latent",
        descending: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Latent rows (JSON decoded, no examples), sorted; statistics sort descending by default."""
        if order_by not in ORDERS:
            raise FeatureDBError(f"order_by must be one of {ORDERS}, got {order_by!r}.")
        descending = order_by != "latent" if descending is None else descending
        direction = "DESC" if descending else "ASC"
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM latents ORDER BY {order_by} {direction}, latent LIMIT ? OFFSET ?",
                (-1 if limit is None else limit, offset),
            ).fetchall()
        return [_decode(r) for r in rows]

    def search(self, query: str, limit: int = 100) -> list[int]:
        """Latents whose top tokens or explanation match every word of `query` (prefix match),
        best match first; a bare latent number matches that latent; punctuation-only queries
        match top tokens by substring."""
        query = query.strip()
        found: list[int] = []
        with self._lock:
            if query.isdigit() and int(query) < self._count():
                found.append(int(query))
            fts = _fts_query(query)
            if fts is not None:
                rows = self._conn.execute(
                    "SELECT latent FROM latents_fts WHERE latents_fts MATCH ? ORDER BY rank LIMIT ?",
                    (fts, limit),
                ).fetchall()
            elif query:
                rows = self._conn.execute(
                    "SELECT latent FROM latents WHERE instr(top_tokens, ?) > 0 ORDER BY latent LIMIT ?",
                    (query, limit),
                ).fetchall()
            else:
                rows = []
        found += [int(r[0]) for r in rows if int(r[0]) not in found]
        return found[:limit]
