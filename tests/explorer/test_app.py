"""The web explorer over loopback: routes, errors, path traversal, concurrency, live tools."""

from __future__ import annotations

import asyncio
import inspect
import socket

import httpx
import pytest

from saelab.analysis import FeatureDB
from saelab.explorer.app import create_app
from saelab.explorer.cli import serve_command
from saelab.explorer.server import DEFAULT_HOST, running_server


@pytest.fixture(scope="module")
def server(explorer):
    """Base URL of the app served from a thread on 127.0.0.1 (stopped after the module)."""
    with running_server(create_app(explorer.run / "features.sqlite", device="cpu")) as url:
        yield url


def _raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET with the request target sent byte for byte (no client-side path normalisation)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_pages_and_json_routes(server, explorer):
    with FeatureDB(explorer.run / "features.sqlite") as db:
        expected = db.latent(5)
        by_frequency = [r["latent"] for r in db.latents(order_by="frequency", limit=5)]
    index = httpx.get(f"{server}/")
    assert index.status_code == 200 and 'id="latent-data"' in index.text
    assert 'id="analyze-form"' in index.text  # live tools only in the served app
    page = httpx.get(f"{server}/latent/5")
    assert page.status_code == 200 and "Latent 5" in page.text and 'id="steer-form"' in page.text
    assert httpx.get(f"{server}/api/latent/5").json() == expected
    ranked = httpx.get(f"{server}/api/latents", params={"order_by": "frequency", "limit": 5}).json()
    assert [r["latent"] for r in ranked] == by_frequency
    found = httpx.get(f"{server}/api/search", params={"q": "zebra"}).json()
    assert found == {"query": "zebra", "latents": [explorer.explained]}
    meta = httpx.get(f"{server}/api/meta").json()
    assert meta["d_sae"] == explorer.d_sae and "overview" not in meta
    assert httpx.get(f"{server}/static/explorer.css").status_code == 200
    assert httpx.get(f"{server}/plots/features_overview.png").content[:4] == b"\x89PNG"


def test_unknown_latents_are_404_and_bad_input_422(server, explorer):
    for path in ("/latent/9999", "/api/latent/9999", "/api/latent/-1"):
        response = httpx.get(server + path)
        assert response.status_code == 404, path
        assert f"0..{explorer.d_sae - 1}" in response.json()["detail"]
    cases = [
        ("GET", "/latent/abc", None),
        ("GET", "/api/latents?order_by=drop%20table", None),
        ("GET", "/api/latents?limit=0", None),
        ("GET", "/api/search?q=", None),
        ("GET", "/api/search?q=" + "a" * 201, None),
        ("POST", "/api/analyze", {"text": "x" * 2001}),
        ("POST", "/api/analyze", {"text": ""}),
        ("POST", "/api/analyze", {"txt": "hello"}),
        ("POST", "/api/steer", {"prompt": "hi", "latent": 1, "strength": "strong"}),
        ("POST", "/api/steer", {"prompt": "hi", "latent": 1, "max_new_tokens": 10_000}),
        ("POST", "/api/steer", {"prompt": "hi", "latent": 1, "mode": "explode"}),
    ]
    for method, path, body in cases:
        response = httpx.request(method, server + path, json=body)
        assert response.status_code == 422, (path, body, response.text)
        messages = [error["msg"] for error in response.json()["detail"]]
        assert messages and all(messages), response.text
    malformed = httpx.post(
        f"{server}/api/analyze", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 422
    unknown = httpx.post(
        f"{server}/api/steer", json={"prompt": "hi", "latent": 9999, "strength": 1}
    )
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/static/../features.sqlite",
        "/static/%2e%2e/features.sqlite",
        "/static/%2e%2e%2ffeatures.sqlite",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        "/static//etc/passwd",
        "/plots/../features.sqlite",
        "/plots/%2e%2e%2ffeatures.sqlite",
        "/plots/..%5cfeatures.sqlite",
        "/plots/%2e%2e/sae/cfg.json",
    ],
)
def test_static_routes_refuse_path_traversal(server, path):
    status, body = _raw_get(server, path)
    assert status in (400, 404), (path, status)
    assert b"SQLite format" not in body and b"root:" not in body and b"d_sae" not in body


def test_binds_loopback_by_default(server):
    assert DEFAULT_HOST == "127.0.0.1"
    assert inspect.signature(serve_command).parameters["host"].default == "127.0.0.1"
    assert server.startswith("http://127.0.0.1:")


def test_200_concurrent_requests_all_answered_correctly(server, explorer):
    with FeatureDB(explorer.run / "features.sqlite") as db:
        expected = {r["latent"]: r["frequency"] for r in db.latents()}

    async def fetch_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server, limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *(client.get(f"/api/latent/{i % explorer.d_sae}") for i in range(200))
            )

    responses = asyncio.run(fetch_all())
    assert all(r.status_code == 200 for r in responses)
    for i, response in enumerate(responses):
        row = response.json()
        assert row["latent"] == i % explorer.d_sae
        assert row["frequency"] == expected[row["latent"]]


def test_live_tools_match_the_interventions_api(server, explorer):
    from saelab.formats.load import load_sae
    from saelab.interventions import steer, top_latents_per_token
    from saelab.lm import load_model

    sae = load_sae(explorer.run)
    lm = load_model(sae.cfg.model_name, device="cpu")
    text = "def square(x):\n    return x * x"
    analysed = httpx.post(f"{server}/api/analyze", json={"text": text, "k": 3}, timeout=120)
    assert analysed.status_code == 200, analysed.text
    direct = top_latents_per_token(lm, sae, sae.cfg.hook_name, text, k=3)
    tokens = analysed.json()["tokens"]
    assert [t["token"] for t in tokens] == [t.token for t in direct]
    for got, want in zip(tokens, direct, strict=True):
        assert [i for i, _ in got["latents"]] == [i for i, _ in want.latents]
        assert [v for _, v in got["latents"]] == pytest.approx(
            [v for _, v in want.latents], rel=1e-4
        )
    body = {"prompt": "def ", "latent": 3, "strength": 20.0, "max_new_tokens": 8}
    steered = httpx.post(f"{server}/api/steer", json=body, timeout=120)
    assert steered.status_code == 200, steered.text
    want = steer(lm, sae, sae.cfg.hook_name, "def ", {3: 20.0}, max_new_tokens=8)
    got = steered.json()
    assert (got["baseline"], got["steered"], got["mode"]) == (want.baseline, want.steered, "add")
