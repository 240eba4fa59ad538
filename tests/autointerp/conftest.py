"""Fixtures: the fake OpenAI-compatible server (fake_llm.py) and a synthetic features.sqlite
(synthetic_db.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_llm import FakeLLM
from synthetic_db import build_features_db


@pytest.fixture
def features_db(tmp_path: Path) -> Path:
    """Path of a fresh synthetic features.sqlite."""
    return build_features_db(tmp_path / "run" / "features.sqlite")


@pytest.fixture
def fake_llm() -> Iterator[Callable[..., FakeLLM]]:
    """Factory: fake_llm(**options) -> a started FakeLLM; every server is stopped afterwards."""
    servers: list[FakeLLM] = []

    def make(**options: object) -> FakeLLM:
        server = FakeLLM(lifetime=120, **options).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def dead_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
