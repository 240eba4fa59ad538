"""The local web explorer (FastAPI): the feature browser over features.sqlite plus live tools.

Routes (DESIGN.md): / (index), /latent/{i} (page), /api/latent/{i} (JSON), /api/latents,
/api/search, /api/meta, POST /api/analyze {"text"} (top latents per token) and POST /api/steer
(steered vs baseline generation). /static serves the CSS/JS bundle and /plots the run's figures,
both through Starlette's StaticFiles, which refuses paths outside their folder. The model and
SAE for the live tools load on first use (from the database's recorded model/hook/sae_path).
POST /api/attribute {"prompt", "target"} attributes the next token to the latents (SPEC §5).
Dense latents (saelab.analysis.dense) are left out of /api/latents and /api/analyze unless the
request includes them, as in `saelab prompt`. No Swagger UI: FastAPI's loads its JS and CSS from
a CDN (blank offline) and no dependency ships them; the schema stays at /api/openapi.json.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from saelab.analysis.database import FEATURES_FILE, ORDERS, FeatureDB
from saelab.analysis.dense import DENSE_THRESHOLD, is_dense
from saelab.analysis.figures import OVERVIEW_FILE
from saelab.explorer.render import (
    MAX_NEW_TOKENS,
    MAX_TEXT_CHARS,
    Links,
    render_index,
    render_latent,
)

LINKS = Links("/", "/latent/{i}", f"/plots/{OVERVIEW_FILE}")
# Edges "Explain this prediction" reports between the served SAE and the --circuit ones.
CIRCUIT_EDGES = 20


class AnalyzeRequest(BaseModel):
    """POST /api/analyze body."""

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    k: int = Field(5, ge=1, le=50)
    include_dense: bool = False
    dense_threshold: float = Field(DENSE_THRESHOLD, gt=0, le=1)


class SteerRequest(BaseModel):
    """POST /api/steer body: one latent, its strength and how it is applied."""

    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    latent: int = Field(ge=0)
    strength: float = Field(0.0, allow_inf_nan=False, ge=-1e4, le=1e4)
    mode: Literal["add", "clamp", "ablate"] = "add"
    max_new_tokens: int = Field(24, ge=1, le=MAX_NEW_TOKENS)
    seed: int = 0


class AttributeRequest(BaseModel):
    """POST /api/attribute body: the prompt, the next token to explain (default: the model's
    most likely one) and how many latents to show per position."""

    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    target: str | None = Field(None, max_length=200)
    top: int = Field(3, ge=1, le=20)


@dataclass
class LiveModel:
    """The LM + SAE of the live tools, loaded once on first use (thread-safe)."""

    model: str | None
    hook: str | None
    sae_path: str | None
    device: str | None = None
    circuit: tuple[str, ...] = ()
    _loaded: tuple | None = field(default=None, init=False)
    _circuit: list | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def get(self) -> tuple[Any, Any, str]:
        """(lm, sae, hook); raises HTTP 503 naming what is missing or failed."""
        with self._lock:
            if self._loaded is None:
                if not (self.model and self.hook and self.sae_path):
                    raise HTTPException(
                        503,
                        "live tools need the model, hook and SAE path (pass --model/--hook/--sae).",
                    )
                from saelab.formats.load import load_sae
                from saelab.lm.loading import load_model

                try:
                    lm = load_model(self.model, device=self.device)
                    sae = load_sae(self.sae_path).to(lm.device)
                except (LookupError, ValueError, OSError) as error:
                    raise HTTPException(503, f"could not load the model or SAE: {error}") from error
                self._loaded = (lm, sae, self.hook)
            return self._loaded

    def circuit_saes(self) -> list:
        """The --circuit SAEs (spliced in beside the served one by POST /api/attribute),
        loaded once; HTTP 503 naming the one that failed."""
        lm, _, _ = self.get()
        with self._lock:
            if self._circuit is None:
                from saelab.formats.load import load_sae

                saes = []
                for path in self.circuit:
                    try:
                        saes.append(load_sae(path).to(lm.device).eval())
                    except (LookupError, ValueError, OSError) as error:
                        raise HTTPException(
                            503, f"could not load --circuit {path}: {error}"
                        ) from error
                self._circuit = saes
            return self._circuit

    @property
    def lock(self) -> threading.Lock:
        return self._lock


def _interventions():
    """saelab.interventions (imported when a live tool is first used)."""
    try:
        import saelab.interventions as interventions
    except ImportError as error:
        raise HTTPException(501, f"this tool needs saelab.interventions: {error}") from error
    return interventions


def flagged(row: dict[str, Any], threshold: float) -> dict[str, Any]:
    """A latent row with "dead" (never fired on the analysed tokens) and "dense" added."""
    return {
        **row,
        "dead": row["n_fired"] == 0,
        "dense": bool(is_dense(row["frequency"], threshold)),
    }


def create_app(
    database: Path,
    *,
    model: str | None = None,
    hook: str | None = None,
    sae_path: str | None = None,
    device: str | None = None,
    circuit: tuple[str, ...] = (),
) -> FastAPI:
    """The explorer app over one features.sqlite; model/hook/sae_path override its meta.
    circuit: more SAEs (other hooks of the same model) that "Explain this prediction" splices in
    beside the served one, with the edges between them."""
    db = FeatureDB(database)
    meta = db.meta()
    n_latents = db.count()
    live = LiveModel(
        model or meta.get("model"),
        hook or meta.get("hook"),
        sae_path or meta.get("sae_path"),
        device,
        tuple(str(path) for path in circuit),
    )
    app = FastAPI(
        title="saelab explorer", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json"
    )
    app.mount(
        "/static", StaticFiles(directory=str(files("saelab.explorer") / "static")), name="static"
    )
    plots = database.parent / "plots"
    if plots.is_dir():
        app.mount("/plots", StaticFiles(directory=str(plots)), name="plots")
    links = LINKS if (plots / OVERVIEW_FILE).is_file() else Links(LINKS.home, LINKS.latent_pattern)
    public_meta = {k: v for k, v in meta.items() if k != "overview"}

    def row_or_404(i: int) -> dict[str, Any]:
        row = db.latent(i)
        if row is None:
            raise HTTPException(404, f"no latent {i}; valid latents: 0..{n_latents - 1}")
        return row

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return render_index(meta, db.latents(), links, live=True)

    @app.get("/latent/{i}", response_class=HTMLResponse)
    def latent_page(i: int) -> str:
        return render_latent(meta, row_or_404(i), links, live=True)

    @app.get("/api/meta")
    def api_meta() -> dict[str, Any]:
        return public_meta

    @app.get("/api/latent/{i}")
    def api_latent(
        i: int, dense_threshold: float = Query(DENSE_THRESHOLD, gt=0, le=1)
    ) -> dict[str, Any]:
        return flagged(row_or_404(i), dense_threshold)

    @app.get("/api/latents")
    def api_latents(
        order_by: Literal[ORDERS] = "latent",  # type: ignore[valid-type]
        descending: bool | None = None,
        limit: int = Query(100, ge=1, le=10_000),
        offset: int = Query(0, ge=0),
        include_dense: bool = False,
        include_dead: bool = True,
        dense_threshold: float = Query(DENSE_THRESHOLD, gt=0, le=1),
    ) -> list[dict[str, Any]]:
        rows = [flagged(r, dense_threshold) for r in db.latents(order_by, descending)]
        kept = [
            r for r in rows if (include_dense or not r["dense"]) and (include_dead or not r["dead"])
        ]
        return kept[offset : offset + limit]

    @app.get("/api/search")
    def api_search(
        q: str = Query(min_length=1, max_length=200), limit: int = Query(100, ge=1, le=1000)
    ) -> dict[str, Any]:
        return {"query": q, "latents": db.search(q, limit=limit)}

    @app.post("/api/analyze")
    def api_analyze(request: AnalyzeRequest) -> dict[str, Any]:
        interventions = _interventions()
        lm, sae, hook_name = live.get()
        frequency = [r["frequency"] for r in db.latents()]
        try:
            with live.lock:
                result, dense = interventions.prompt.analyze_prompt(
                    lm, sae, hook_name, request.text, k=request.k, frequency=frequency,
                    source=FEATURES_FILE, threshold=request.dense_threshold,
                    exclude_dense=not request.include_dense,
                )  # fmt: skip
        except ValueError as error:  # the served database does not describe the live SAE
            raise HTTPException(409, str(error)) from error
        return {
            "text": request.text,
            "tokens": [
                {
                    "position": t.position,
                    "token": t.token,
                    "latents": [[int(i), float(v)] for i, v in t.latents],
                }
                for t in result
            ],
            "dense": dense.to_dict(),
        }

    @app.post("/api/steer")
    def api_steer(request: SteerRequest) -> dict[str, Any]:
        if request.latent >= n_latents:
            raise HTTPException(
                404, f"no latent {request.latent}; valid latents: 0..{n_latents - 1}"
            )
        interventions = _interventions()
        lm, sae, hook_name = live.get()
        with live.lock:
            result = interventions.steer(
                lm, sae, hook_name, request.prompt, {request.latent: request.strength},
                max_new_tokens=request.max_new_tokens, mode=request.mode, seed=request.seed,
            )  # fmt: skip
        return {
            "prompt": result.prompt, "baseline": result.baseline, "steered": result.steered,
            "latent": request.latent, "strength": request.strength, "mode": result.mode,
        }  # fmt: skip

    @app.post("/api/attribute")
    def api_attribute(request: AttributeRequest) -> dict[str, Any]:
        _interventions()
        from saelab.interventions import attribution
        from saelab.interventions.explanations import find_features_db, load_explanations

        lm, sae, hook_name = live.get()
        extra = live.circuit_saes()
        with live.lock:
            try:
                target = request.target or attribution.predicted_token(lm, request.prompt)
                result = attribution.attribute(
                    lm, [sae, *extra], request.prompt, attribution.make_metric(lm, target),
                    edges=CIRCUIT_EDGES if extra else 0, hooks=[hook_name] + [None] * len(extra),
                )  # fmt: skip
            except ValueError as error:
                raise HTTPException(422, str(error)) from error
        served = {r["latent"]: r["explanation"] for r in db.latents() if r["explanation"]}
        paths = {
            id(sae): live.sae_path,
            **{id(s): p for s, p in zip(extra, live.circuit, strict=True)},
        }
        sources = [paths[id(site.sae)] for site in result.sites]
        explanations = [
            served if site.sae is sae else load_explanations(
                find_features_db(Path(source)), range(site.sae.cfg.d_sae)
            )
            for site, source in zip(result.sites, sources, strict=True)
        ]  # fmt: skip
        report = attribution.attribution_report(
            result, request.prompt, lm.name, sources, explanations, top=request.top
        )
        report["served_site"] = next(i for i, s in enumerate(result.sites) if s.sae is sae)
        return report

    return app
