"""`saelab dashboard`: a static, self-contained HTML site over features.sqlite.

index.html lists every latent (sortable, searchable in the page); latents/{i}.html is one
page per latent. Pages inline their CSS/JS and link only to each other (relative links), so
the folder works from file:// with no network, and can be copied or zipped as is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from saelab.analysis.database import FeatureDB
from saelab.analysis.figures import OVERVIEW_FILE
from saelab.explorer.render import Links, render_index, render_latent

OVERVIEW_COPY = "overview.png"


def build_dashboard(db: FeatureDB, out: Path, progress: bool = True) -> Path:
    """Write the site into folder out; returns the path of its index.html."""
    meta = db.meta()
    pages = out / "latents"
    pages.mkdir(parents=True, exist_ok=True)
    overview = db.path.parent / "plots" / OVERVIEW_FILE
    has_overview = overview.is_file()
    if has_overview:
        shutil.copyfile(overview, out / OVERVIEW_COPY)
    index_links = Links("index.html", "latents/{i}.html", OVERVIEW_COPY if has_overview else None)
    page_links = Links("../index.html", "{i}.html", f"../{OVERVIEW_COPY}" if has_overview else None)
    rows = db.latents()
    index = out / "index.html"
    index.write_text(render_index(meta, rows, index_links, live=False), encoding="utf-8")
    bar = Progress(
        TextColumn("dashboard pages"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not progress,
    )  # fmt: skip
    with bar:
        for summary in bar.track(rows):
            row = db.latent(summary["latent"])
            html = render_latent(meta, row, page_links, live=False)
            (pages / f"{row['latent']}.html").write_text(html, encoding="utf-8")
    return index
