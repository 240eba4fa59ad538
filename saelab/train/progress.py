"""A rich progress bar for training: tokens/s, ETA and each SAE's live L0 / FVU / dead fraction."""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from types import TracebackType

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

RATE_EVERY_S = 0.5


class _BarAndMetrics(Progress):
    """The bar on one line, then one line of live metrics per SAE (so the bar is never cut)."""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            yield from task.fields["live"]


class TrainProgress(AbstractContextManager):
    """Shows progress on stderr; a no-op when disabled."""

    def __init__(self, total_tokens: int, names: list[str], enabled: bool) -> None:
        self.names = names
        self.enabled = enabled
        self._progress = _BarAndMetrics(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tokens"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._progress.add_task("train", total=total_tokens, rate="", live=[])
        self._rate_at = 0.0

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

    def update(self, tokens: int, latest: list[dict[str, float]] | None = None) -> None:
        """Advance to `tokens` done (cheap enough for every step, no device sync).

        `latest`, each SAE's most recent metrics (or {}), also refreshes the live metrics text.
        """
        if not self.enabled:
            return
        fields = {}
        if latest is not None:
            fields["live"] = [
                Text(
                    f"  {name}: L0 {m['l0']:.1f}  FVU {m['fvu']:.3f}  dead {m['dead_fraction']:.1%}"
                )
                for name, m in zip(self.names, latest, strict=True)
                if m
            ]
        now = time.monotonic()
        if now - self._rate_at >= RATE_EVERY_S:  # rich's speed estimate costs ~30 µs
            self._rate_at = now
            speed = self._progress.tasks[0].speed
            fields["rate"] = f"{speed:,.0f} tok/s" if speed else ""
        self._progress.update(self._task, completed=tokens, **fields)
