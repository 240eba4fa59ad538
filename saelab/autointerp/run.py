"""Autointerp orchestration: explain and score latents of a features.sqlite, resumably.

Each latent: explanation (from its shown examples) → detection and fuzzing scores (from its
held-out examples). Every answer is written as soon as it arrives (autointerp table; the
explanation and scores into the latents table through FeatureDB), so an interrupted run loses
nothing and a rerun with the same LLM model skips what is already answered. A backend that
cannot serve requests (server down, bad key) stops the run with AutointerpAborted.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saelab.analysis.database import FeatureDB
from saelab.autointerp.client import ChatBackend, LLMUnavailable
from saelab.autointerp.explainer import explain, split_examples
from saelab.autointerp.prompts import active_positions
from saelab.autointerp.scorers import SCORERS, score_detection, score_fuzzing
from saelab.autointerp.stage import StageResult
from saelab.autointerp.store import AutointerpStore
from saelab.validation import check_values


@dataclass
class AutointerpConfig:
    """How many examples each stage shows, which scorers run, and resume behaviour."""

    explain_top: int = 10
    explain_quantile: int = 6
    detection_examples: int = 10
    fuzzing_examples: int = 10
    max_marks: int = 5
    scorers: tuple[str, ...] = SCORERS
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.scorers = tuple(self.scorers)
        check_values(
            self,
            {
                "explain_top": (self.explain_top >= 1, "an integer >= 1"),
                "explain_quantile": (self.explain_quantile >= 0, "an integer >= 0"),
                "detection_examples": (self.detection_examples >= 1, "an integer >= 1"),
                "fuzzing_examples": (self.fuzzing_examples >= 2, "an integer >= 2"),
                "max_marks": (self.max_marks >= 1, "an integer >= 1"),
                "scorers": (set(self.scorers) <= set(SCORERS), f"a subset of {SCORERS}"),
            },
            "autointerp setting",
        )


@dataclass
class LatentOutcome:
    """One latent's result: status ∈ done|unparsed|error|no_examples, and whether it was skipped."""

    latent: int
    status: str = "done"
    skipped: bool = True
    explanation: str | None = None
    detection: float | None = None
    fuzzing: float | None = None
    errors: list[str] = field(default_factory=list)


class AutointerpAborted(RuntimeError):
    """The backend became unusable; finished latents are saved. `summary` has the partial run."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class Autointerp:
    """Explains and scores latents of one database with one backend."""

    def __init__(
        self, db: FeatureDB, store: AutointerpStore, backend: ChatBackend, config: AutointerpConfig
    ) -> None:
        self.db, self.store, self.backend, self.config = db, store, backend, config

    def _save(self, latent: int, result: StageResult, outcome: LatentOutcome) -> None:
        """Record a fresh answer and copy a parsed score/explanation into the latents table."""
        outcome.skipped = False
        self.store.record(latent, self.backend.model, result)
        if result.value is None:
            return
        if result.kind == "explanation":
            self.db.set_explanation(latent, result.value)
            self.store.clear_scores(latent)
        else:
            self.db.set_scores(latent, **{result.kind: result.value})

    def _note(self, result: StageResult, outcome: LatentOutcome) -> None:
        """Fold one stage's result into the latent's outcome."""
        if result.error is not None:
            outcome.status = "error"
            outcome.errors.append(f"{result.kind}: {result.error}")
        elif not result.parsed and outcome.status == "done":
            outcome.status = "unparsed"
        if result.kind == "explanation":
            outcome.explanation = result.value
        elif result.parsed:
            setattr(outcome, result.kind, result.value)

    async def latent(self, latent: int) -> LatentOutcome:
        """Run the missing stages of one latent."""
        outcome = LatentOutcome(latent)
        record = self.db.latent(latent)
        examples = [
            e for e in (record or {}).get("examples", []) if active_positions(e["activations"])
        ]
        if not examples:
            outcome.status = "no_examples"
            return outcome
        cfg = self.config
        done = {} if cfg.overwrite else self.store.done(latent, self.backend.model)
        shown, held_out = split_examples(examples, cfg.explain_top, cfg.explain_quantile)
        result = done.get("explanation")
        if result is None:
            result = await explain(self.backend, shown, cfg.max_marks)
            self._save(latent, result, outcome)
            done = {}
        self._note(result, outcome)
        if result.value is None:
            return outcome
        pending = [kind for kind in cfg.scorers if kind not in done]
        own = {tuple(e["tokens"]) for e in examples}
        fresh = await asyncio.gather(
            *(self._score(kind, latent, result.value, held_out, own) for kind in pending),
            return_exceptions=True,
        )
        for scored in fresh:
            if isinstance(scored, StageResult):
                self._save(latent, scored, outcome)
        for scored in fresh:
            if isinstance(scored, BaseException):
                raise scored
        for kind in cfg.scorers:
            self._note(done.get(kind) or fresh[pending.index(kind)], outcome)
        return outcome

    async def _score(
        self,
        kind: str,
        latent: int,
        explanation: str,
        held_out: Sequence[dict],
        own: set[tuple[str, ...]],
    ) -> StageResult:
        """One scorer on a sample of held-out examples (seeded by seed, latent and scorer);
        detection's non-activating contexts are other latents' examples not in `own`."""
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:{latent}:{kind}")
        if kind == "fuzzing":
            sample = rng.sample(list(held_out), min(cfg.fuzzing_examples, len(held_out)))
            return await score_fuzzing(self.backend, explanation, sample, rng, cfg.max_marks)
        sample = rng.sample(list(held_out), min(cfg.detection_examples, len(held_out)))
        negatives = self.store.other_contexts(latent, own, len(sample), rng)
        if not negatives:
            return StageResult(
                kind="detection",
                error="no other latents' examples to use as non-activating contexts",
            )
        return await score_detection(
            self.backend, explanation, [e["tokens"] for e in sample], negatives, rng
        )

    async def run(
        self, latents: Sequence[int], workers: int, on_done: Callable[[LatentOutcome], None]
    ) -> tuple[list[LatentOutcome], LLMUnavailable | None]:
        """All latents through `workers` concurrent loops; stops early when the backend is down."""
        queue = list(latents)[::-1]
        outcomes: list[LatentOutcome] = []
        fatal: list[LLMUnavailable] = []

        async def work() -> None:
            while queue and not fatal:
                latent = queue.pop()
                try:
                    outcome = await self.latent(latent)
                except LLMUnavailable as error:
                    fatal.append(error)
                    return
                outcomes.append(outcome)
                on_done(outcome)

        await asyncio.gather(*(work() for _ in range(max(1, workers))))
        outcomes.sort(key=lambda o: o.latent)
        return outcomes, (fatal[0] if fatal else None)


def summarise(
    outcomes: Sequence[LatentOutcome],
    requested: int,
    backend: ChatBackend,
    db_path: Path,
    prices: tuple[float, float] | None,
) -> dict[str, Any]:
    """JSON-ready summary: counts by status, mean scores, token usage and estimated cost."""

    def mean(key: str) -> float | None:
        values = [getattr(o, key) for o in outcomes if getattr(o, key) is not None]
        return sum(values) / len(values) if values else None

    usage = asdict(backend.usage)
    usage["cost"] = backend.usage.cost(*prices) if prices is not None else None
    return {
        "database": str(db_path),
        "llm_model": backend.model,
        "requested": requested,
        "finished": len(outcomes),
        "skipped": sum(o.skipped for o in outcomes),
        **{
            s: sum(o.status == s for o in outcomes)
            for s in ("done", "unparsed", "error", "no_examples")
        },
        "mean_detection": mean("detection"),
        "mean_fuzzing": mean("fuzzing"),
        "usage": usage,
        "results": [asdict(o) for o in outcomes],
    }


def run_autointerp(
    db_path: str | Path,
    latents: Sequence[int],
    backend: ChatBackend,
    config: AutointerpConfig | None = None,
    *,
    workers: int = 1,
    prices: tuple[float, float] | None = None,
    on_done: Callable[[LatentOutcome], None] = lambda outcome: None,
) -> dict[str, Any]:
    """Explain and score `latents` in features.sqlite at db_path; returns the summary.

    Raises AutointerpAborted (with the partial summary) when the backend becomes unusable.
    The backend is closed afterwards.
    """
    config = config or AutointerpConfig()
    db_path = Path(db_path)
    db, store = FeatureDB(db_path), AutointerpStore(db_path)
    try:
        job = Autointerp(db, store, backend, config)
        outcomes, fatal = asyncio.run(_run_and_close(job, latents, workers, on_done))
    finally:
        store.close()
        db.close()
    summary = summarise(outcomes, len(latents), backend, db_path, prices)
    if fatal is not None:
        raise AutointerpAborted(
            f"{fatal}\n{len(outcomes)} of {len(latents)} latents finished; their explanations "
            f"and scores are saved in {db_path}. Rerun the same command to continue.",
            summary,
        )
    return summary


async def _run_and_close(
    job: Autointerp,
    latents: Sequence[int],
    workers: int,
    on_done: Callable[[LatentOutcome], None],
) -> tuple[list[LatentOutcome], LLMUnavailable | None]:
    """Run the job, then close the backend's connections inside the same event loop."""
    try:
        return await job.run(latents, workers, on_done)
    finally:
        await job.backend.aclose()
