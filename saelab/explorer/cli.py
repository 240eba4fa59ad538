"""`saelab dashboard` (static site) and `saelab serve` (local web app)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from saelab import cli_common as c
from saelab.explorer.server import DEFAULT_HOST, DEFAULT_PORT

RunArg = Annotated[
    Path,
    typer.Argument(
        help="Run directory with features.sqlite (from `saelab analyze`), or the .sqlite file."
    ),
]


def dashboard_command(
    path: RunArg,
    out: Annotated[Path, typer.Option(help="Folder for the site (index.html + latents/).")],
    json_output: c.JsonSummary = False,
) -> None:
    """Static, self-contained HTML dashboard (works from file://, no network)."""
    from saelab.analysis.database import FeatureDB
    from saelab.explorer.run import database_path
    from saelab.explorer.static_site import build_dashboard

    with c.exit_on(ValueError), FeatureDB(database_path(path)) as db:
        index = build_dashboard(db, out)
        n = db.count()
    if json_output:
        typer.echo(json.dumps({"index": str(index), "latents": n}))
    else:
        typer.echo(f"Dashboard of {n:,} latents: {index.resolve().as_uri()}")


def serve_command(
    path: RunArg,
    host: Annotated[
        str, typer.Option(help="Interface to bind (loopback by default; 0.0.0.0 exposes it).")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="TCP port.")] = DEFAULT_PORT,
    model: Annotated[
        str | None, typer.Option(help="Model of the live tools (default: the one analysed).")
    ] = None,
    hook: Annotated[str | None, typer.Option(help="Hook (default: the one analysed).")] = None,
    sae: Annotated[str | None, typer.Option(help="SAE path (default: the one analysed).")] = None,
    device: Annotated[
        str | None, c.device_option("Torch device of the live tools (default: cuda if available).")
    ] = None,
    circuit: Annotated[
        list[Path] | None,
        typer.Option(
            help="Another SAE of the same model (a run or SAE directory, at another hook) for "
            '"Explain this prediction" to splice in beside the served one, drawing the edges '
            "between their latents; repeat for several."
        ),
    ] = None,
) -> None:
    """Local web explorer: feature browser, top latents per token, steering playground,
    "Explain this prediction" (latent attribution, SPEC §5).

    A port already in use is an error (exit 1) before anything is served."""
    from saelab.explorer.app import create_app
    from saelab.explorer.run import database_path
    from saelab.explorer.server import check_port, serve

    with c.exit_on(ValueError):
        for extra in circuit or []:
            if not extra.exists():
                raise ValueError(f"--circuit {extra}: no such file or directory")
        app = create_app(
            database_path(path), model=model, hook=hook, sae_path=sae, device=device,
            circuit=tuple(circuit or ()),
        )  # fmt: skip
        check_port(host, port)
    typer.echo(f"saelab explorer on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    serve(app, host, port)
