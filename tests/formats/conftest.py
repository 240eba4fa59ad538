"""A stub of the Hugging Face Hub's HTTP API on 127.0.0.1, enough for huggingface_hub's
downloads (HEAD/GET resolve) and uploads (create repo, preupload, commit), with the error codes
the real Hub sends. huggingface_hub is pointed at it (ENDPOINT, a fresh cache, a dummy token)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest


@dataclass
class StubRepo:
    """Commits (sha → {path: bytes}) and refs (branch or tag → sha) of one model repo."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    private: bool = False

    def commit(self, files: dict[str, bytes], parent: str | None, ref: str = "main") -> str:
        tree = dict(self.commits.get(parent, {})) if parent else {}
        tree.update(files)
        sha = hashlib.sha1(repr((sorted(tree), parent, len(self.commits))).encode()).hexdigest()
        self.commits[sha] = tree
        self.refs[ref] = sha
        return sha


@dataclass
class StubHub:
    """The stub's state: repos by id, every request seen, and failures to inject."""

    url: str = ""
    repos: dict[str, StubRepo] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    drop_next_commit: bool = False

    def add(self, repo_id: str, files: dict[str, bytes], ref: str = "main") -> str:
        """Commit `files` to repo_id (created if needed) on `ref`; returns the commit sha."""
        repo = self.repos.setdefault(repo_id, StubRepo())
        return repo.commit(files, repo.refs.get(ref) or repo.refs.get("main"), ref)

    def files(self, repo_id: str, ref: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.refs[ref]]


def _handler(hub: StubHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, **extra) -> None:
            body = json.dumps({"error": message, **extra}).encode()
            self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message,
                                      "Content-Type": "application/json"})  # fmt: skip

        def _resolve(self) -> None:
            parts = urlparse(self.path).path.lstrip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self._error(404, "EntryNotFound", "not a resolve URL")
            repo_id, revision = "/".join(parts[:2]), unquote(parts[3])
            filename = unquote("/".join(parts[4:]))
            hub.requests.append((self.command, f"{repo_id}/{revision}/{filename}"))
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(401, "RepoNotFound", f"Repository {repo_id} not found")
            sha = repo.refs.get(revision, revision if revision in repo.commits else None)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            data = repo.commits[sha].get(filename)
            if data is None:
                return self._error(404, "EntryNotFound", f"{filename} does not exist")
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            self._send(200, data, {"X-Repo-Commit": sha, "ETag": etag,
                                   "Content-Type": "application/octet-stream"})  # fmt: skip

        def do_HEAD(self) -> None:
            self._resolve()

        def do_GET(self) -> None:
            self._resolve()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            path = urlparse(self.path).path
            hub.requests.append(("POST", path))
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}"
                if repo_id in hub.repos:
                    return self._error(409, "RepoExists", "You already created this model repo",
                                       url=f"{hub.url}/{repo_id}")  # fmt: skip
                hub.repos[repo_id] = StubRepo(private=payload.get("visibility") == "private")
                return self._send(200, json.dumps({"url": f"{hub.url}/{repo_id}"}).encode())
            if path == "/api/validate-yaml":  # the model card's metadata, checked before a commit
                return self._send(200, b"{}")
            parts = path.split("/")  # /api/models/owner/name/(preupload|commit)/revision
            if len(parts) < 7 or parts[1:3] != ["api", "models"]:
                return self._error(404, "EntryNotFound", f"no route {path}")
            repo_id, action, revision = f"{parts[3]}/{parts[4]}", parts[5], unquote(parts[6])
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            if action == "preupload":
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                         for f in json.loads(body)["files"]]  # fmt: skip
                return self._send(200, json.dumps({"files": files}).encode())
            if action == "commit":
                if hub.drop_next_commit:  # the connection dies before the Hub answers
                    hub.drop_next_commit = False
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                files = {}
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                sha = repo.commit(files, repo.refs.get(revision), revision)
                answer = {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha}
                return self._send(200, json.dumps(answer).encode())
            return self._error(404, "EntryNotFound", f"no route {path}")

    return Handler


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running StubHub; huggingface_hub (this process and child processes) talks to it,
    caches into tmp_path/hf-cache, and sends a dummy token."""
    from huggingface_hub import constants

    state = StubHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "ENDPOINT", state.url)
    template = state.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name, value in (("HF_ENDPOINT", state.url), ("HF_HUB_CACHE", str(cache)),
                        ("HF_TOKEN", "hf_stub_token"), ("HF_HUB_DISABLE_XET", "1")):  # fmt: skip
        monkeypatch.setenv(name, value)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
