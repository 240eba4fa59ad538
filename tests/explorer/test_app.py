"""The web explorer over loopback: routes, errors, path traversal, concurrency, live tools,
dense/dead filters, no CDN, a busy port."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import socket

import httpx
import pytest
import torch
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from saelab.analysis import FeatureDB
from saelab.analysis.dense import DENSE_THRESHOLD
from saelab.cli import app as cli_app
from saelab.explorer.app import create_app
from saelab.explorer.cli import serve_command
from saelab.explorer.render import INDEX_PAGE_SIZE
from saelab.explorer.server import DEFAULT_HOST, check_port, free_port, running_server

HOOK_OF_RUN = "blocks.1.hook_resid_post"  # the explorer fixture's SAE


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
        rows = db.latents(order_by="frequency")
    by_frequency = [r["latent"] for r in rows if r["frequency"] <= DENSE_THRESHOLD][:5]
    assert rows[0]["latent"] == explorer.always_on and by_frequency[0] != explorer.always_on
    index = httpx.get(f"{server}/")
    assert index.status_code == 200 and 'id="latent-data"' in index.text
    assert 'id="analyze-form"' in index.text  # live tools only in the served app
    page = httpx.get(f"{server}/latent/5")
    assert page.status_code == 200 and "Latent 5" in page.text and 'id="steer-form"' in page.text
    flags = {"dead": expected["n_fired"] == 0, "dense": False}
    assert httpx.get(f"{server}/api/latent/5").json() == {**expected, **flags}
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


def test_latent_json_flags_dense_and_dead(server, explorer):
    dense = httpx.get(f"{server}/api/latent/{explorer.always_on}").json()
    assert dense["frequency"] == 1.0 and (dense["dense"], dense["dead"]) == (True, False)
    dead = httpx.get(f"{server}/api/latent/{explorer.dead}").json()
    assert dead["n_fired"] == 0 and (dead["dense"], dead["dead"]) == (False, True)
    page = httpx.get(f"{server}/latent/{explorer.always_on}").text
    assert "dense: fires on more than 50% of tokens" in page
    assert "dead: never fired" in httpx.get(f"{server}/latent/{explorer.dead}").text
    for bad in (0, 1.5, "half"):
        response = httpx.get(f"{server}/api/latent/1", params={"dense_threshold": bad})
        assert response.status_code == 422, bad


def test_latents_api_filters_dense_and_dead_like_the_cli(big_db):
    client = TestClient(create_app(big_db.path))

    def latents(**params) -> list[int]:
        response = client.get("/api/latents", params={"limit": 10_000, **params})
        assert response.status_code == 200, response.text
        return [r["latent"] for r in response.json()]

    everything = list(range(big_db.n))
    assert latents(include_dense=True) == everything
    assert latents() == [i for i in everything if i not in big_db.dense]  # half (= 0.5) kept
    without_dead = [i for i in everything if i not in big_db.dense + big_db.dead]
    assert latents(include_dead=False) == without_dead
    assert latents(dense_threshold=0.65) == [i for i in everything if i not in (0, 1)]
    assert latents(dense_threshold=0.45) == [i for i in everything if i > big_db.half]
    by_frequency = latents(order_by="frequency", limit=3, offset=2_000, include_dead=False)
    assert by_frequency == without_dead[2_000:2_003]
    rows = client.get("/api/latents", params={"include_dense": True, "limit": 4}).json()
    assert [(r["dense"], r["dead"]) for r in rows] == [(True, False)] * 3 + [(False, False)]
    assert client.get("/api/latents", params={"dense_threshold": 0}).status_code == 422


def test_served_pages_reference_no_cdn_and_swagger_is_off(explorer):
    """FastAPI's Swagger UI loads from a CDN (blank offline): it is off; nothing served links
    to an http(s) URL. The OpenAPI schema stays."""
    app = create_app(explorer.run / "features.sqlite", device="cpu")
    client = TestClient(app)
    bodies = {}
    for route in app.routes:
        if isinstance(route, APIRoute) and "GET" in route.methods:
            path = route.path.replace("{i}", str(explorer.explained))
            response = client.get(path, params={"q": "zebra"} if path == "/api/search" else None)
            assert response.status_code == 200, path
            bodies[path] = response.text
    for name in ("explorer.js", "explorer.css"):
        bodies[f"/static/{name}"] = client.get(f"/static/{name}").text
    assert {"/", f"/latent/{explorer.explained}", "/static/explorer.js"} <= bodies.keys()
    for path, body in bodies.items():
        assert not re.search(r"https?://", body), path
    for path in ("/api/docs", "/docs", "/redoc", "/api/redoc"):
        assert client.get(path).status_code == 404, path
    schema = client.get("/api/openapi.json").json()
    assert {"/api/analyze", "/api/latents"} <= schema["paths"].keys()


def test_index_pages_through_every_latent(big_db):
    html = TestClient(create_app(big_db.path)).get("/").text
    data = json.loads(re.search(r'id="latent-data">(.*?)</script>', html, re.S).group(1))
    assert [r[0] for r in data["rows"]] == list(range(big_db.n))
    assert (data["page_size"], data["dense_threshold"]) == (INDEX_PAGE_SIZE, DENSE_THRESHOLD)
    assert 'id="hide-dead"' in html and 'id="hide-dense" checked' in html
    assert "hide dense (fires on &gt; 50% of tokens)" in html and 'id="page-next"' in html


def test_serve_on_a_busy_port_is_a_one_line_error(explorer):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", str(explorer.run), "--port", str(port)])
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"Error: port {port} on 127.0.0.1 is in use; pass --port with a free port.\n"
    )
    assert result.stdout == ""
    bad = CliRunner().invoke(cli_app, ["serve", str(explorer.run), "--port", "70000"])
    assert bad.exit_code == 1 and bad.stderr == "Error: --port must be in 1..65535, got 70000.\n"
    check_port("127.0.0.1", free_port())  # a free port passes
    with pytest.raises(ValueError) as error:  # 192.0.2.1: TEST-NET-1, never a local address
        check_port("192.0.2.1", 8765)
    message = str(error.value)
    assert message.startswith("cannot listen on 192.0.2.1:8765: ")
    assert message.endswith("; pass --host with an address of this machine, or another --port.")


def test_live_tools_match_the_interventions_api(server, explorer):
    from saelab.formats.load import load_sae
    from saelab.interventions import steer, top_latents_per_token
    from saelab.lm import load_model

    sae = load_sae(explorer.run)
    lm = load_model(sae.cfg.model_name, device="cpu")
    text = "def square(x):\n    return x * x"
    dense = torch.zeros(explorer.d_sae, dtype=torch.bool)
    dense[explorer.always_on] = True
    for include_dense, exclude in ((True, None), (False, dense)):
        body = {"text": text, "k": 3, "include_dense": include_dense}
        analysed = httpx.post(f"{server}/api/analyze", json=body, timeout=120)
        assert analysed.status_code == 200, analysed.text
        direct = top_latents_per_token(lm, sae, sae.cfg.hook_name, text, k=3, exclude=exclude)
        tokens = analysed.json()["tokens"]
        assert [t["token"] for t in tokens] == [t.token for t in direct]
        for got, want in zip(tokens, direct, strict=True):
            assert [i for i, _ in got["latents"]] == [i for i, _ in want.latents]
            assert [v for _, v in got["latents"]] == pytest.approx(
                [v for _, v in want.latents], rel=1e-4
            )
        assert analysed.json()["dense"] == {
            "threshold": DENSE_THRESHOLD, "excluded": not include_dense,
            "source": "features.sqlite", "latents": [[explorer.always_on, 1.0]],
        }  # fmt: skip
        on_top = [explorer.always_on in [i for i, _ in t["latents"][:1]] for t in tokens]
        assert on_top == [include_dense] * len(tokens)
    strict = {"text": text, "dense_threshold": 1.0, "include_dense": False}
    kept = httpx.post(f"{server}/api/analyze", json=strict, timeout=120).json()
    assert (
        kept["dense"]["latents"] == [] and kept["tokens"][0]["latents"][0][0] == explorer.always_on
    )
    bad = httpx.post(f"{server}/api/analyze", json={"text": text, "dense_threshold": 2})
    assert bad.status_code == 422
    body = {"prompt": "def ", "latent": 3, "strength": 20.0, "max_new_tokens": 8}
    steered = httpx.post(f"{server}/api/steer", json=body, timeout=120)
    assert steered.status_code == 200, steered.text
    want = steer(lm, sae, sae.cfg.hook_name, "def ", {3: 20.0}, max_new_tokens=8)
    got = steered.json()
    assert (got["baseline"], got["steered"], got["mode"]) == (want.baseline, want.steered, "add")


def test_attribute_api_matches_the_library(server, explorer):
    from saelab.formats.load import load_sae
    from saelab.interventions.attribution import attribute, predicted_token
    from saelab.lm import load_model

    sae = load_sae(explorer.run)
    lm = load_model(sae.cfg.model_name, device="cpu")
    prompt = "def square(x):\n    return x"
    got = httpx.post(f"{server}/api/attribute", json={"prompt": prompt, "top": 2}, timeout=120)
    assert got.status_code == 200, got.text
    report = got.json()
    target = predicted_token(lm, prompt)  # no target given: the model's top prediction
    want = attribute(lm, sae, prompt, target)
    assert report["metric"]["target"] == target
    assert report["metric"]["value"] == pytest.approx(want.value, abs=1e-6)
    assert [p["token"] for p in report["positions"]] == want.tokens
    for row in report["positions"]:
        for node in row["latents"]:
            expected = float(want.latents[0][row["position"], node["latent"]])
            assert node["attribution"] == pytest.approx(expected, rel=1e-4, abs=1e-9)
            if node["latent"] == explorer.explained:
                assert node["explanation"] == explorer.explanation
        assert len(row["latents"]) <= 2
    too_long = httpx.post(f"{server}/api/attribute", json={"prompt": prompt, "target": "zzqxj"})
    assert too_long.status_code == 422 and "--target 'zzqxj' is" in too_long.json()["detail"]
    empty = httpx.post(f"{server}/api/attribute", json={"prompt": ""})
    assert empty.status_code == 422


def test_attribute_api_with_a_circuit_sae_reports_edges(explorer, tmp_path):
    import saelab

    served = saelab.load_sae(explorer.run)
    later = saelab.create_sae("topk", 64, 128, k=8, seed=5, hook_name="blocks.2.hook_resid_post",
                              model_name=served.cfg.model_name)  # fmt: skip
    path = later.save(tmp_path / "later")
    client = TestClient(create_app(explorer.run / "features.sqlite", device="cpu",
                                   circuit=(str(path),)))  # fmt: skip
    response = client.post("/api/attribute", json={"prompt": "def f(x):"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert [s["hook"] for s in report["sites"]] == [HOOK_OF_RUN, "blocks.2.hook_resid_post"]
    assert report["served_site"] == 0 and report["sites"][1]["run"] == str(path)
    assert 0 < len(report["edges"]) <= 20
    assert {(e["from"]["site"], e["to"]["site"]) for e in report["edges"]} == {(0, 1)}
    missing = CliRunner().invoke(cli_app, ["serve", str(explorer.run), "--circuit",
                                           str(tmp_path / "nothing")])  # fmt: skip
    assert missing.exit_code == 1 and "--circuit" in missing.output and "nothing" in missing.output
