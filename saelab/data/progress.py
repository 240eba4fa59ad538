"""A rich progress bar for token-counting jobs (rate in tokens/s and ETA), drawn on stderr."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _RateColumn(ProgressColumn):
    """Units (tokens) per second: rich's moving-window estimate, else the mean since the start.

    The window (30 s) holds too few updates when each batch takes long (e.g. a large LM on CPU).
    """

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            speed = task.completed / task.elapsed if task.elapsed else 0.0
        return Text(f"{speed:,.0f} {self.unit}/s", style="progress.data.speed")


@contextmanager
def token_progress(
    description: str, total: int, unit: str = "tok"
) -> Iterator[Callable[[int, int], None]]:
    """Context manager yielding an on_progress(done, total) callback that drives the bar;
    `unit` names what is counted in the rate (tokens by default)."""
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with progress:
        task = progress.add_task(description, total=total)

        def update(done: int, new_total: int) -> None:
            progress.update(task, completed=done, total=new_total)

        yield update
