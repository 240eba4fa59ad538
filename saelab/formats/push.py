"""`saelab push`: upload a run's SAE to the Hugging Face Hub with a model card, in one commit.

Uploaded under PATH in the repo: cfg.json and sae_weights.safetensors (a SAELens folder),
sparsity.safetensors (log10 feature density, key "sparsity", as SAELens writes it, from the
evaluation's latent_stats.safetensors), eval.json, and README.md, a model card naming the model,
hook, architecture, training tokens and metrics and how to load the SAE with saelab and SAELens.
Everything goes in one commit, so an interrupted push leaves the repo as it was.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from saelab.evals.density import LATENT_STATS_FILE
from saelab.formats.saelens import CFG_FILE, WEIGHTS_FILE
from saelab.sae import SAE

SPARSITY_FILE = "sparsity.safetensors"
EVAL_FILE = "eval.json"
CARD_FILE = "README.md"


@dataclass
class Upload:
    """One file to upload: its path in the repo and its bytes."""

    path: str
    data: bytes


def sae_folder(run: Path) -> Path:
    """The SAE folder of a run (RUN/sae) or RUN itself; a one-line error otherwise."""
    for folder in (run / "sae", run):
        if (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
            return folder
    raise ValueError(f"{run}: no SAE to push (expected {CFG_FILE} + {WEIGHTS_FILE} in RUN/sae)")


def _beside(run: Path, folder: Path, name: str) -> Path | None:
    """`name` in the run directory or the SAE folder (where `saelab eval` writes it)."""
    return next((p for p in (run / name, folder / name) if p.is_file()), None)


def sparsity_bytes(stats: Path) -> bytes:
    """SAELens's sparsity.safetensors from saelab's latent stats: log10(frequency + 1e-10)."""
    frequency = load_file(str(stats))["firing_frequency"]
    return save({"sparsity": torch.log10(frequency + 1e-10).float().contiguous()})


def training_tokens(run: Path) -> int | None:
    """The token budget in the run's config.yaml (saelab train), when there is one."""
    import yaml

    config = run / "config.yaml"
    if not config.is_file():
        return None
    tokens = (yaml.safe_load(config.read_text()) or {}).get("tokens")
    return int(tokens) if isinstance(tokens, int) else None


def model_card(
    sae: SAE, repo: str, path: str, report: dict[str, Any] | None, tokens: int | None = None
) -> str:
    """README.md: what the SAE is, its metrics, and how to load it."""
    cfg = sae.cfg
    where = f"hf://{repo}/{path}" if path else f"hf://{repo}"
    lines = [
        "---",
        "library_name: saelab",
        "tags: [sparse-autoencoder, saelab, sae-lens]",
        "---",
        f"# {cfg.architecture} SAE on {cfg.model_name or 'an unrecorded model'} "
        f"`{cfg.hook_name or '?'}`",
        "",
        f"- architecture: {cfg.architecture}, d_in {cfg.d_in}, d_sae {cfg.d_sae}"
        + (f", k {cfg.k}" if cfg.k else "")
        + (f", target L0 {cfg.target_l0:g}" if cfg.target_l0 else ""),
        f"- model: {cfg.model_name}; hook: {cfg.hook_name}"
        + (f" → {cfg.target_hook_name} (transcoder)" if cfg.target_hook_name else ""),
        f"- training tokens: {'not recorded' if tokens is None else f'{tokens:,}'}; "
        f"dataset: {cfg.dataset or 'not recorded'}; context size: {cfg.context_size}",
    ]
    if report is not None:
        lines += ["", f"Evaluation ({report['n_tokens']:,} held-out tokens, saelab eval):", ""]
        lines += ["| metric | value |", "|---|---|"]
        for group in report["metrics"].values():
            for name, value in group.items():
                lines.append(f"| {name} | {'—' if value is None else f'{value:.4g}'} |")
    lines += [
        "",
        "## Load it",
        "",
        "```python",
        "import saelab",
        f'sae = saelab.load_sae("{where}")',
        "```",
        "",
        "With SAELens (a SAELens folder: cfg.json + sae_weights.safetensors):",
        "",
        "```python",
        "from huggingface_hub import snapshot_download",
        "from sae_lens import SAE",
        f'root = snapshot_download("{repo}"' + (f', allow_patterns=["{path}/*"])' if path else ")"),
        "sae = SAE.load_from_disk(" + (f'f"{{root}}/{path}")' if path else "root)"),
        "```",
        "",
        "Trained with [saelab](https://pypi.org/project/saelab/).",
    ]
    return "\n".join(lines) + "\n"


def push_plan(run: Path, repo: str, path: str = "") -> tuple[list[Upload], list[str]]:
    """(files to upload, notes on what is left out and why) for `saelab push`."""
    from saelab.formats.load import load_sae

    if "/" not in repo or repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"--repo {repo!r}: give owner/name, e.g. alice/gemma-saes")
    folder = sae_folder(run)
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    uploads = [
        Upload(prefix + name, (folder / name).read_bytes()) for name in (CFG_FILE, WEIGHTS_FILE)
    ]
    notes = []
    stats = _beside(run, folder, LATENT_STATS_FILE)
    if stats is not None:
        uploads.append(Upload(prefix + SPARSITY_FILE, sparsity_bytes(stats)))
    else:
        notes.append(f"{SPARSITY_FILE}: no {LATENT_STATS_FILE} (run `saelab eval {run}` first)")
    report_path = _beside(run, folder, EVAL_FILE)
    report = json.loads(report_path.read_text()) if report_path is not None else None
    if report_path is not None:
        uploads.append(Upload(prefix + EVAL_FILE, report_path.read_bytes()))
    else:
        notes.append(f"{EVAL_FILE}: none (run `saelab eval {run}` first)")
    card = model_card(load_sae(folder), repo, path.strip("/"), report, training_tokens(run))
    uploads.append(Upload(prefix + CARD_FILE, card.encode()))
    return uploads, notes


def push(
    run: Path, repo: str, path: str = "", private: bool = False, dry_run: bool = False
) -> dict[str, Any]:
    """Upload the run (module docstring) and return {repo, path, files, left_out, commit}."""
    uploads, notes = push_plan(run, repo, path)
    result: dict[str, Any] = {
        "repo": repo,
        "path": path.strip("/"),
        "files": [{"path": u.path, "bytes": len(u.data)} for u in uploads],
        "left_out": notes,
        "commit": None,
    }
    if dry_run:
        return result
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        operations = [CommitOperationAdd(u.path, u.data) for u in uploads]
        info = api.create_commit(repo, operations, commit_message=f"saelab push {run.name}")
    except (HfHubHTTPError, OSError, *transport_errors()) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PushError(
            f"push to {repo} failed ({reason}); nothing was committed, so `saelab push` can "
            "simply be run again"
        ) from error
    result["commit"] = info.oid
    return result


def transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client errors huggingface_hub can raise: httpx2's (huggingface_hub ≥ 1.0),
    httpx's (earlier versions)."""
    errors = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).HTTPError)
        except ImportError:
            continue
    return tuple(errors)


class PushError(RuntimeError):
    """An upload that did not reach a commit: the repo is as it was before."""
