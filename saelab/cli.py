"""The `saelab` command: one subcommand per pipeline stage (DESIGN.md "CLI")."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="saelab: train, evaluate and interpret sparse autoencoders on LM activations.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.command()
def demo(
    out: str = typer.Option("demo_out", help="Folder for the demo's SAEs and report."),
    seed: int = typer.Option(0, help="Random seed (data, initialisation, shuffling)."),
) -> None:
    """End-to-end quickstart on the built-in defaults."""
    from saelab.demo import run_demo

    run_demo(out=out, seed=seed)


if __name__ == "__main__":
    app()
