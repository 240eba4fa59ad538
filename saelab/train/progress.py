"""A rich progress bar for training: tokens/s, ETA and each SAE's live L0 / FVU / dead fraction."""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress(AbstractContextManager):
    """Shows progress on stderr; a no-op when disabled."""

    def __init__(self, total_tokens: int, names: list[str], enabled: bool) -> None:
        self.names = names
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tokens"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[live]}"),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._progress.add_task("train", total=total_tokens, rate="", live="")

    def __enter__(self) -> TrainProgress:
        self._progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def update(self, tokens: int, latest: list[dict[str, float]]) -> None:
        """Advance to `tokens` done; `latest` holds each SAE's most recent metrics (or {})."""
        if not self.enabled:
            return
        live = "  ".join(
            f"{name}: L0 {m['l0']:.1f} FVU {m['fvu']:.3f} dead {m['dead_fraction']:.0%}"
            for name, m in zip(self.names, latest, strict=True)
            if m
        )
        task = self._progress.tasks[0]
        rate = f"{task.speed:,.0f} tok/s" if task.speed else ""
        self._progress.update(self._task, completed=tokens, rate=rate, live=live)
