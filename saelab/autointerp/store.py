"""The autointerp table of features.sqlite: every LLM answer (raw, parsed flag, tokens, error).

One row per question asked: (latent, kind ∈ explanation|detection|fuzzing, llm_model,
prompt_tokens, completion_tokens, raw, parsed, result, error, created). The newest row of a
(latent, kind, llm_model) decides whether that stage is done: it is when the LLM answered
(parsed or not, error NULL); failed requests are retried on the next run. Explanations and
scores themselves go into the latents table through FeatureDB (which keeps latents_fts in sync).
"""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from saelab.autointerp.stage import StageResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS autointerp (
    latent INTEGER, kind TEXT, llm_model TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
    raw TEXT, parsed INTEGER, result TEXT, error TEXT, created TEXT
);
CREATE INDEX IF NOT EXISTS autointerp_latent ON autointerp (latent, kind, llm_model);
"""


class AutointerpStore:
    """Reads and writes the autointerp table (its own connection to features.sqlite)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(self.path, timeout=30)
        self._conn.row_factory = sqlite3.Row
        with self._conn:
            self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def record(self, latent: int, llm_model: str, result: StageResult) -> None:
        """Append one answer (or failure) for a latent."""
        value = None if result.value is None else json.dumps(result.value)
        with self._conn:
            self._conn.execute(
                "INSERT INTO autointerp VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    latent, result.kind, llm_model, result.prompt_tokens,
                    result.completion_tokens, result.raw, int(result.parsed), value,
                    result.error, datetime.now(UTC).isoformat(timespec="seconds"),
                ),
            )  # fmt: skip

    def done(self, latent: int, llm_model: str) -> dict[str, StageResult]:
        """{kind: newest answered StageResult} of a latent with this model (failed ones omitted)."""
        rows = self._conn.execute(
            "SELECT * FROM autointerp WHERE latent = ? AND llm_model = ? ORDER BY rowid",
            (latent, llm_model),
        ).fetchall()
        newest = {row["kind"]: row for row in rows}
        return {
            kind: StageResult(
                kind=kind,
                value=None if row["result"] is None else json.loads(row["result"]),
                raw=row["raw"],
                parsed=bool(row["parsed"]),
                prompt_tokens=row["prompt_tokens"],
                completion_tokens=row["completion_tokens"],
            )
            for kind, row in newest.items()
            if row["error"] is None
        }

    def clear_scores(self, latent: int) -> None:
        """Forget a latent's scores (they described its previous explanation)."""
        with self._conn:
            self._conn.execute(
                "UPDATE latents SET score_detection = NULL, score_fuzzing = NULL WHERE latent = ?",
                (latent,),
            )

    def other_contexts(
        self, latent: int, exclude: set[tuple[str, ...]], k: int, rng: random.Random
    ) -> list[list[str]]:
        """Up to k token lists sampled from other latents' examples (the non-activating contexts
        of detection), skipping any context in `exclude` (this latent's own examples)."""
        top = self._conn.execute("SELECT MAX(rowid) FROM examples").fetchone()[0] or 0
        found: list[list[str]] = []
        seen = set(exclude)
        for _ in range(4):
            if len(found) >= k or top == 0:
                break
            ids = rng.sample(range(1, top + 1), min(top, 4 * k))
            marks = ",".join("?" * len(ids))
            rows = self._conn.execute(
                f"SELECT rowid, tokens FROM examples WHERE rowid IN ({marks}) AND latent != ?",
                (*ids, latent),
            ).fetchall()
            by_id = {row["rowid"]: json.loads(row["tokens"]) for row in rows}
            for rowid in ids:
                tokens = by_id.get(rowid)
                if tokens is not None and tuple(tokens) not in seen and len(found) < k:
                    seen.add(tuple(tokens))
                    found.append(tokens)
        return found
