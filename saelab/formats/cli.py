"""`saelab push`: upload a run's SAE to the Hugging Face Hub (saelab.formats.push)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from saelab import cli_common as c


def push_command(
    run: Annotated[
        Path, typer.Argument(help="Run directory (with sae/) or a saelab/SAELens SAE folder.")
    ],
    repo: Annotated[str, typer.Option(help="Hub model repo owner/name (created if missing).")],
    path: Annotated[
        str, typer.Option(help="Folder in the repo for the SAE (default: the repo's root).")
    ] = "",
    private: Annotated[
        bool, typer.Option(help="Create the repo private (an existing repo keeps its setting).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="List what would be uploaded, with sizes; upload nothing.")
    ] = False,
    json_output: c.JsonSummary = False,
) -> None:
    """Upload cfg.json, the weights, sparsity.safetensors, eval.json and a model card in one
    commit (log in first with `hf auth login`, or set HF_TOKEN)."""
    from saelab.formats.push import PushError, push

    with c.exit_on(ValueError, OSError, PushError):
        result = push(run, repo, path, private=private, dry_run=dry_run)
    if json_output:
        typer.echo(json.dumps(result))
        return
    where = f"{repo}/{result['path']}" if result["path"] else repo
    verb = "Would upload" if dry_run else "Uploaded"
    typer.echo(f"{verb} to {where}:")
    for entry in result["files"]:
        typer.echo(f"  {entry['path']}  ({entry['bytes']:,} bytes)")
    for note in result["left_out"]:
        typer.echo(f"  not uploaded: {note}")
    if result["commit"]:
        typer.echo(f'commit {result["commit"]}; load it with saelab.load_sae("hf://{where}")')
