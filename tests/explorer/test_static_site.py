"""`saelab dashboard`: a complete, self-contained static site matching features.sqlite."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from saelab.analysis import FeatureDB
from saelab.cli import app


def test_dashboard_writes_every_page_self_contained(explorer, tmp_path):
    explorer_run, D_SAE = explorer.run, explorer.d_sae
    site = tmp_path / "site"
    result = CliRunner().invoke(app, ["dashboard", str(explorer_run), "--out", str(site), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == {"index": str(site / "index.html"), "latents": D_SAE}
    pages = sorted((site / "latents").glob("*.html"))
    assert len(pages) == D_SAE and (site / "overview.png").is_file()
    for page in [site / "index.html", *pages[:20]]:
        html = page.read_text()
        # No network: no absolute URLs in src/href, no external stylesheets or scripts.
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), page
        assert "<link" not in html and "@import" not in html
        assert "<style>" in html and "<script>" in html  # the inline bundle


def test_pages_hold_the_database_contents(explorer, tmp_path):
    explorer_run, D_SAE, EXPLAINED = explorer.run, explorer.d_sae, explorer.explained
    site = tmp_path / "site"
    CliRunner().invoke(app, ["dashboard", str(explorer_run), "--out", str(site)])
    with FeatureDB(explorer_run / "features.sqlite") as db:
        row = db.latent(EXPLAINED)
        index = (site / "index.html").read_text()
        data = json.loads(re.search(r'id="latent-data">(.*?)</script>', index, re.S).group(1))
        assert len(data["rows"]) == D_SAE
        assert data["rows"][EXPLAINED][5] == row["explanation"]
        assert data["href"] == "latents/{i}.html"
    page = (site / "latents" / f"{EXPLAINED}.html").read_text()
    # The explanation is escaped (no HTML injection from the database).
    assert "zebra crossings &lt;b&gt;not bold&lt;/b&gt;" in page and "<b>not bold" not in page
    examples = json.loads(re.search(r'id="example-data">(.*?)</script>', page, re.S).group(1))
    top = [e for e in row["examples"] if e["kind"] == "top"]
    assert [e[0] for e in examples["top"]] == [e["tokens"] for e in top]
    assert [e[1] for e in examples["top"]] == [e["activations"] for e in top]
    assert examples["scale"] == row["max_activation"]
    for _, value in row["logit_pos"]:
        assert f"{value:+.3f}" in page
    assert page.count("<rect") == len(row["histogram"]["counts"])
