"""Fail fast offline: a hub model or dataset is looked up only if the hub answers or it is cached.

Without this, transformers and datasets retry an unreachable hub for 30-50 s before saying the
name cannot be loaded. One HEAD request to the endpoint (HF_ENDPOINT, proxies from the
environment) with a short timeout tells first; HF_HUB_OFFLINE skips the request.
"""

from __future__ import annotations

import threading
from pathlib import Path

PROBE_TIMEOUT_S = 2.0


class HubLookupError(LookupError):
    """A name the hub cannot be asked about now: not a hub name, or the hub cannot be reached
    and the model or dataset is not in the local cache."""


def hub_problem() -> str | None:
    """Why the Hugging Face hub cannot be used now (offline mode, no connection), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "the Hugging Face hub is off (HF_HUB_OFFLINE is set)"
    problem = _probe(constants.ENDPOINT)
    if problem is None:
        return None
    return f"the Hugging Face hub at {constants.ENDPOINT} cannot be reached ({problem})"


def _probe(endpoint: str) -> str | None:
    """None if `endpoint` answers an HTTP request (any status) within the timeout, else why not."""
    import httpx

    outcome: list[str | None] = []

    def request() -> None:
        try:
            httpx.head(endpoint, timeout=PROBE_TIMEOUT_S)
            outcome.append(None)
        except httpx.TimeoutException:
            outcome.append(f"no answer within {PROBE_TIMEOUT_S:g} s")
        except httpx.TransportError as error:
            outcome.append(str(error) or type(error).__name__)

    # In a thread with a deadline: name resolution does not honour httpx's timeout.
    thread = threading.Thread(target=request, name="saelab-hub-probe", daemon=True)
    thread.start()
    thread.join(2 * PROBE_TIMEOUT_S)
    return outcome[0] if outcome else f"no answer within {PROBE_TIMEOUT_S:g} s"


def cache_folder(repo_id: str, repo_type: str) -> Path:
    """Where huggingface_hub keeps the files of repo_id (repo_type: "model" or "dataset")."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)


def check_hub_access(repo_id: str, repo_type: str) -> bool:
    """True if the hub answers; False if it cannot be used but repo_id is cached (read it from
    the cache only). HubLookupError, saying why, if neither or if repo_id is no hub name."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubLookupError(f"no such local path, and not a hub name ({error})") from None
    problem = hub_problem()
    if problem is None:
        return True
    snapshots = cache_folder(repo_id, repo_type) / "snapshots"
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return False
    raise HubLookupError(
        f"{problem}, and it is not in the local cache {cache_folder(repo_id, repo_type).parent}"
    )
