"""Jinja2 rendering of the explorer pages, shared by the static dashboard and the web app.

Pages are self-contained: the one CSS/JS bundle (static/explorer.css, explorer.js) is inlined,
histograms are inline SVG and token colours are inline styles, so a page needs no network and
works from file://. `Links` says where pages live (static files or server routes). The index
holds every latent and pages through them in the browser (INDEX_PAGE_SIZE rows a page), with
filters for dead and dense latents (saelab.analysis.dense: the threshold of `--exclude-dense`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from saelab.analysis.dense import DENSE_THRESHOLD

INDEX_PAGE_SIZE = 500
MAX_TEXT_CHARS = 2000
MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class Links:
    """URLs between pages: home (index), latent(i), and the overview figure (or None)."""

    home: str
    latent_pattern: str  # with "{i}" for the latent index
    overview: str | None = None

    def latent(self, i: int) -> str:
        return self.latent_pattern.replace("{i}", str(i))


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("saelab.explorer", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


@cache
def bundle() -> dict[str, str]:
    """The inline CSS and JS of every page."""
    static = files("saelab.explorer") / "static"
    return {
        "css": (static / "explorer.css").read_text(),
        "js": (static / "explorer.js").read_text(),
    }


def shown(token: str) -> str:
    """A token as displayed: newlines made visible (the span keeps the line break)."""
    return token.replace("\n", "⏎\n")


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(value).replace("</", "<\\/")


def histogram_svg(histogram: dict[str, list], width: int = 280, height: int = 110) -> str:
    """An inline SVG bar chart of {"edges", "counts"} with its x range labelled."""
    counts, edges = histogram.get("counts", []), histogram.get("edges", [])
    if not counts:
        return '<p class="muted">no activations</p>'
    peak, bar = max(counts), width / len(counts)
    plot = height - 16
    rects = "".join(
        f'<rect x="{i * bar:.2f}" y="{plot - c / peak * plot:.2f}" width="{max(bar - 1, 1):.2f}" '
        f'height="{c / peak * plot:.2f}"><title>[{edges[i]:.4g}, {edges[i + 1]:.4g}): {c}</title></rect>'
        for i, c in enumerate(counts)
    )
    labels = (
        f'<text x="0" y="{height - 2}" font-size="10">{edges[0]:.3g}</text>'
        f'<text x="{width}" y="{height - 2}" font-size="10" text-anchor="end">{edges[-1]:.3g}</text>'
    )
    return f'<svg class="hist" width="{width}" height="{height}" role="img">{rects}{labels}</svg>'


def _context(meta: dict[str, Any], links: Links, live: bool) -> dict[str, Any]:
    return {
        "meta": meta,
        "links": links,
        "live": live,
        "bundle": bundle(),
        "shown": shown,
        "limits": {"text": MAX_TEXT_CHARS, "new_tokens": MAX_NEW_TOKENS},
        "dense_threshold": DENSE_THRESHOLD,
    }


def render_index(meta: dict[str, Any], rows: list[dict[str, Any]], links: Links, live: bool) -> str:
    """The index page: every latent in a sortable, searchable, paged table with dead/dense
    filters (data inlined as JSON)."""
    data = {
        "href": links.latent_pattern,
        "page_size": INDEX_PAGE_SIZE,
        "dense_threshold": DENSE_THRESHOLD,
        "rows": [
            [r["latent"], r["frequency"], r["max_activation"], r["mean_activation"],
             r["top_tokens"] or "", r["explanation"] or ""]
            for r in rows
        ],
    }  # fmt: skip
    template = _environment().get_template("index.html")
    return template.render(**_context(meta, links, live), index_json=_script_json(data))


def _example(e: dict[str, Any]) -> list:
    """An example as the page's JS reads it: [tokens, activations, max_index, max_activation]."""
    return [e["tokens"], e["activations"], e["max_index"], e["max_activation"]]


def render_latent(meta: dict[str, Any], row: dict[str, Any], links: Links, live: bool) -> str:
    """One latent's page: stats, histogram, logit lens, neighbours, and its examples (inlined
    as JSON; the bundle's JS colours each token by activation / max activation, exact value on
    hover), which keeps pages small and fast to write."""
    bands: dict[int, list] = {}
    for e in row["examples"]:
        if e["kind"] == "quantile":
            bands.setdefault(e["quantile"], []).append(_example(e))
    examples = {
        "scale": row["max_activation"],
        "bands": meta.get("quantiles", len(bands)),
        "top": [_example(e) for e in row["examples"] if e["kind"] == "top"],
        "quantiles": sorted(bands.items(), reverse=True),
    }
    template = _environment().get_template("latent.html")
    return template.render(
        **_context(meta, links, live),
        row=row,
        examples_json=_script_json(examples),
        histogram_svg=histogram_svg(row["histogram"]),
    )
