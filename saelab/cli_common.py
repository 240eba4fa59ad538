"""Option types and error handling shared by the `saelab` subcommands (DESIGN.md "CLI")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from saelab.devices import check_device

INPUT_ERRORS: tuple[type[Exception], ...] = (LookupError, ValueError, ModuleNotFoundError)


def fail(error: BaseException) -> typer.Exit:
    """Print `Error: …` on stderr and return the exit (status 1) to raise."""
    typer.echo(f"Error: {error}", err=True)
    return typer.Exit(1)


@contextmanager
def exit_on(*errors: type[Exception]) -> Iterator[None]:
    """Turn the given bad-input errors into a one-line `Error: …` on stderr and exit status 1."""
    try:
        yield
    except errors as error:
        raise fail(error) from error


def warn(message: str) -> None:
    """Print a one-line `Warning: …` on stderr (what the library would raise as a UserWarning)."""
    typer.echo(f"Warning: {message}", err=True)


def checked_device(name: str | None) -> str | None:
    """Callback of every --device option: the name if this machine has that device, else a
    one-line `Error: …` and exit status 1, before the command loads anything."""
    with exit_on(ValueError):
        return check_device(name)


def device_option(help_text: str) -> Any:
    """A --device option (default None) checked by checked_device as soon as it is parsed."""
    return typer.Option(help=help_text, callback=checked_device)


SaeModel = Annotated[
    str | None, typer.Option(help="Model (default: the SAE's recorded model_name).")
]
SaeHook = Annotated[
    str | None, typer.Option(help="Hook point (default: the SAE's recorded hook_name).")
]
Device = Annotated[
    str | None, device_option("Torch device (default: cuda if available, else cpu).")
]
LmDtype = Annotated[str, typer.Option(help="Dtype the LM runs in: float32, float16 or bfloat16.")]
BatchSize = Annotated[int, typer.Option(help="Contexts per LM forward pass.")]
SaeContextSize = Annotated[
    int | None,
    typer.Option(help="Tokens per context, BOS included (default: the SAE's, else 128)."),
]
TextField = Annotated[str, typer.Option(help="Text column of .jsonl/.parquet/datasets corpora.")]
JsonSummary = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
