"""SAEs on the Hugging Face Hub: `hf://owner/repo/path/in/repo[@revision]` references and release
ids, downloaded through huggingface_hub into its normal cache (so offline use works from it).

A reference names a folder (or a .npz file) in a model repo. The folder's layout is found by
asking for each known layout's first file in turn (HUB_LAYOUTS): a SAELens folder, a Gemma Scope
params.npz, a Gemma Scope 2 params.safetensors, a Llama Scope checkpoint. Release ids resolve
through SAELens's own registry when `sae-lens` is installed (read from the installed package),
else through saelab's small table of the Gemma Scope family (GEMMA_SCOPE_RELEASES).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from saelab.formats.errors import SAEFileError

HUB_SCHEME = "hf://"
# (layout, files it needs, files it may have), paths relative to the referenced folder.
HUB_LAYOUTS = (
    ("saelens", ("cfg.json", "sae_weights.safetensors"), ("sparsity.safetensors",)),
    ("gemma-scope", ("params.npz",), ()),
    ("gemma-scope-2", ("params.safetensors",), ("config.json",)),
    ("llama-scope", ("hyperparams.json", "checkpoints/final.safetensors"), ()),
)
# Release id → (repo, folder its SAE ids live under) for the Gemma Scope family, named as in
# SAELens's registry (used when sae-lens is not installed; the registry has many more).
GEMMA_SCOPE_2_SITES = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_out", "transcoders": ""}
GEMMA_SCOPE_RELEASES = {
    **{
        f"gemma-scope-{model}-{site}": (f"google/gemma-scope-{model}-{site}", "")
        for model, sites in (
            ("2b-pt", ("res", "mlp", "att")),
            ("9b-pt", ("res", "mlp", "att")),
            ("9b-it", ("res",)),
            ("27b-pt", ("res",)),
        )
        for site in sites
    },
    **{
        f"gemma-scope-2-{size}-{kind}-{site}": (f"google/gemma-scope-2-{size}-{kind}", folder)
        for size in ("270m", "1b", "4b", "12b", "27b")
        for kind in ("pt", "it")
        for site, folder in GEMMA_SCOPE_2_SITES.items()
    },
}


@dataclass(frozen=True)
class HubRef:
    """A folder or file in a Hub model repo at a revision (None: the default branch)."""

    repo_id: str
    path: str
    revision: str | None = None

    def __str__(self) -> str:
        path = f"/{self.path}" if self.path else ""
        at = f"@{self.revision}" if self.revision else ""
        return f"{HUB_SCHEME}{self.repo_id}{path}{at}"


def parse_hub_ref(text: str | Path) -> HubRef | None:
    """The HubRef of "hf://owner/repo[/path][@revision]" (also "hf:/…", what pathlib makes of
    it), else None. A repo without a path means its root folder."""
    match = re.fullmatch(r"hf:/{1,2}([^/@]+)/([^/@]+)((?:/[^@]*)?)(?:@(.+))?", str(text))
    if match is None:
        return None
    owner, name, path, revision = match.groups()
    return HubRef(f"{owner}/{name}", path.strip("/"), revision)


def local_outputs(path: str | Path) -> Path | None:
    """For a Hub reference, the folder under the current directory where commands write what
    they make of it (eval.json, features.sqlite, plots): hub/OWNER--REPO--PATH[@REVISION]; never
    the download cache. None for a local path."""
    ref = parse_hub_ref(path)
    if ref is None:
        return None
    name = "--".join(part for part in (*ref.repo_id.split("/"), *ref.path.split("/")) if part)
    return Path("hub") / (name + (f"@{ref.revision}" if ref.revision else ""))


def resolve_release(release: str, sae_id: str) -> HubRef:
    """The Hub folder of a SAELens release id and SAE id (module docstring)."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        directory = None
    else:
        directory = get_pretrained_saes_directory()
    if directory is not None and release in directory:
        lookup = directory[release]
        if sae_id not in lookup.saes_map:
            known = ", ".join(list(lookup.saes_map)[:5])
            raise LookupError(
                f"release {release!r} has no SAE id {sae_id!r} (SAELens registry; e.g. {known}, "
                f"{len(lookup.saes_map)} in all)"
            )
        return HubRef(lookup.repo_id, lookup.saes_map[sae_id])
    if release in GEMMA_SCOPE_RELEASES:
        repo, folder = GEMMA_SCOPE_RELEASES[release]
        return HubRef(repo, "/".join(part for part in (folder, sae_id.strip("/")) if part))
    if directory is None:
        raise LookupError(
            f"unknown release {release!r}: saelab knows the Gemma Scope family only; install "
            "sae-lens (pip install sae-lens) to resolve SAELens's registry of releases"
        )
    raise LookupError(f"unknown release {release!r} (not in SAELens's registry or saelab's table)")


def download_sae(ref: HubRef) -> Path:
    """The local path (a folder in huggingface_hub's cache, or a .npz file) of the SAE at `ref`,
    downloaded when not cached; SAEFileError naming repo, path and revision otherwise."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def fetch(name: str) -> Path:
        filename = f"{ref.path}/{name}" if ref.path else name
        return Path(hf_hub_download(ref.repo_id, filename, revision=ref.revision))

    unreachable = None
    try:
        if ref.path.endswith(".npz"):
            return Path(hf_hub_download(ref.repo_id, ref.path, revision=ref.revision))
        for _layout, needed, optional in HUB_LAYOUTS:
            try:
                first = fetch(needed[0])
            except LocalEntryNotFoundError as error:
                unreachable = error
                continue
            except EntryNotFoundError:
                continue
            for name in needed[1:]:
                fetch(name)
            for name in optional:
                with contextlib.suppress(EntryNotFoundError, LocalEntryNotFoundError):
                    fetch(name)
            return first.parents[len(Path(needed[0]).parts) - 1]
    except RepositoryNotFoundError:
        raise SAEFileError(
            str(ref),
            f"no repository {ref.repo_id} on the Hub (or it is private: log in with `hf auth login`)",
        ) from None
    except RevisionNotFoundError:
        raise SAEFileError(str(ref), f"no revision {ref.revision!r} in {ref.repo_id}") from None
    except LocalEntryNotFoundError as error:
        unreachable = error
    except EntryNotFoundError:
        pass
    if unreachable is not None:
        raise SAEFileError(
            str(ref),
            "not in the local Hugging Face cache, and the Hub could not be asked "
            f"({type(unreachable).__name__}: offline, or no connection)",
        )
    expected = "; ".join(" + ".join(needed) for _, needed, _ in HUB_LAYOUTS)
    where = f"{ref.repo_id}/{ref.path}" if ref.path else ref.repo_id
    raise SAEFileError(
        str(ref), f"no SAE in {where} at {ref.revision or 'main'}: expected {expected}"
    )
