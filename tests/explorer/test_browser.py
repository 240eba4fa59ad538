"""Headless Debian chromium (via Selenium) on the static dashboard (file://) and the served app:
search, latent pages, paging beyond one page of latents, dead and dense filters.

Never downloads a browser: uses the system chromium + chromedriver and skips without them.
Screenshots go to $SAELAB_TEST_ARTIFACTS (default: test-artifacts/ in the repository).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from saelab.analysis import FeatureDB
from saelab.analysis.dense import DENSE_THRESHOLD
from saelab.explorer.app import create_app
from saelab.explorer.render import INDEX_PAGE_SIZE, Links, render_index
from saelab.explorer.server import running_server
from saelab.explorer.static_site import build_dashboard

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]
ARTIFACTS = Path(
    os.environ.get("SAELAB_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless chromium driven by the system chromedriver (Selenium Manager kept offline)."""
    pytest.importorskip("selenium", reason="needs the dev extra (selenium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)  # fmt: skip
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _search_open_and_check(driver, start_url: str, explorer, screenshot: str) -> None:
    """Search the index for the explained latent, open its page, check what it renders."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    driver.get(start_url)
    with FeatureDB(explorer.run / "features.sqlite") as db:
        visible = sum(r["frequency"] <= DENSE_THRESHOLD for r in db.latents())
    assert visible == explorer.d_sae - 1  # the always-on latent is hidden by default
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#latent-rows tr")) == visible)
    driver.find_element(By.ID, "search").send_keys("zebra")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#latent-rows tr")) == 1)
    row = driver.find_element(By.CSS_SELECTOR, "#latent-rows tr")
    assert row.get_attribute("data-latent") == str(explorer.explained)
    row.find_element(By.TAG_NAME, "a").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#top-examples .tok")))
    with FeatureDB(explorer.run / "features.sqlite") as db:
        expected = db.latent(explorer.explained)
    assert driver.find_element(By.ID, "latent-title").text.startswith(
        f"Latent {explorer.explained}"
    )
    tokens = driver.find_elements(By.CSS_SELECTOR, "#top-examples .tok")
    top = [e for e in expected["examples"] if e["kind"] == "top"]
    assert len(tokens) == sum(len(e["tokens"]) for e in top)
    values = [float(t.get_attribute("title")) for t in tokens]
    assert values == pytest.approx([a for e in top for a in e["activations"]])
    coloured = [t for t in tokens if "rgba(255, 120, 0, 0)" not in t.get_attribute("style")]
    assert len(coloured) == sum(a > 0 for a in values) > 0
    maxed = driver.find_elements(By.CSS_SELECTOR, "#top-examples .tok.max")
    assert len(maxed) == len(top)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#logit-pos tr")) == len(expected["logit_pos"])
    assert len(driver.find_elements(By.CSS_SELECTOR, "#logit-neg tr")) == len(expected["logit_neg"])
    assert driver.find_elements(By.CSS_SELECTOR, "#quantile-examples .tok")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / screenshot))


def test_static_dashboard_from_file_url(browser, explorer, tmp_path):
    with FeatureDB(explorer.run / "features.sqlite") as db:
        index = build_dashboard(db, tmp_path / "site", progress=False)
    _search_open_and_check(browser, index.resolve().as_uri(), explorer, "dashboard-static.png")
    assert browser.current_url.startswith("file://")


def test_served_app_on_loopback(browser, explorer):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with running_server(create_app(explorer.run / "features.sqlite", device="cpu")) as url:
        _search_open_and_check(browser, f"{url}/", explorer, "dashboard-served.png")
        assert browser.current_url == f"{url}/latent/{explorer.explained}"
        browser.get(f"{url}/")  # the live "top latents per token" tool sets dense latents apart
        browser.find_element(By.CSS_SELECTOR, "#analyze-form textarea").send_keys("def f(x):")
        browser.find_element(By.CSS_SELECTOR, "#analyze-form button").click()
        line = WebDriverWait(browser, 60).until(
            ec.presence_of_element_located((By.ID, "analyze-dense"))
        )
        assert line.text == (
            f"Dense latents (fire on > 50% of tokens) left out: {explorer.always_on} (100.0%)"
        )
        shown = browser.find_elements(By.CSS_SELECTOR, "#analyze-out td a")
        assert shown and str(explorer.always_on) not in [a.text for a in shown]


def test_explain_this_prediction_panel_renders_latents_and_the_graph(browser, explorer):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with running_server(create_app(explorer.run / "features.sqlite", device="cpu")) as url:
        browser.get(f"{url}/")
        prompt = "def square(x):\n    return x"
        browser.find_element(By.CSS_SELECTOR, "#attribute-form textarea").send_keys(prompt)
        browser.find_element(By.CSS_SELECTOR, "#attribute-form button").click()
        graph = WebDriverWait(browser, 120).until(
            ec.presence_of_element_located((By.ID, "attribute-graph"))
        )
        metric = browser.find_element(By.ID, "attribute-metric").text
        assert metric.startswith("m = log p(")
        rows = browser.find_elements(By.CSS_SELECTOR, "#attribute-table tr")
        report = httpx.post(f"{url}/api/attribute", json={"prompt": prompt}, timeout=120).json()
        assert len(rows) == 1 + len(report["positions"])  # a header, then one row per token
        assert metric == f"m = log p({json.dumps(report['metric']['target'])}) = " + (
            browser.execute_script("return fmt(arguments[0])", report["metric"]["value"])
        )
        links = browser.find_elements(By.CSS_SELECTOR, "#attribute-table td a")
        assert links and all(a.get_attribute("href").startswith(f"{url}/latent/") for a in links)
        nodes = graph.find_elements(By.CSS_SELECTOR, "circle.node")
        edges = graph.find_elements(By.CSS_SELECTOR, "line.edge")
        assert len(nodes) == len(links) and len(edges) >= len(nodes)
        assert graph.size["width"] > 100 and graph.size["height"] > 100
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "explain-prediction.png"))


def test_explain_panel_draws_the_circuit_with_a_second_sae(browser, explorer, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    import saelab

    served = saelab.load_sae(explorer.run)
    later = saelab.create_sae("topk", 64, 128, k=8, seed=5, hook_name="blocks.2.hook_resid_post",
                              model_name=served.cfg.model_name)  # fmt: skip
    path = later.save(tmp_path / "later")
    app = create_app(explorer.run / "features.sqlite", device="cpu", circuit=(str(path),))
    with running_server(app) as url:
        browser.get(f"{url}/")
        browser.find_element(By.CSS_SELECTOR, "#attribute-form textarea").send_keys("def f(x):")
        browser.find_element(By.CSS_SELECTOR, "#attribute-form button").click()
        graph = WebDriverWait(browser, 120).until(
            ec.presence_of_element_located((By.ID, "attribute-graph"))
        )
        sites = {
            n.get_attribute("data-site")
            for n in graph.find_elements(By.CSS_SELECTOR, "circle.node")
        }
        assert sites == {"0", "1"}  # blocks.1 (served) below blocks.2
        assert graph.find_elements(By.CSS_SELECTOR, "line.circuit-edge")
        links = browser.find_elements(By.CSS_SELECTOR, "#attribute-table td a")
        assert all(a.get_attribute("href").startswith(f"{url}/latent/") for a in links)
        assert "blocks.2.hook_resid_post" in browser.find_element(By.ID, "attribute-table").text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "explain-prediction-circuit.png"))


def _rows(driver) -> list[int]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#latent-rows tr")
    return [int(row.get_attribute("data-latent")) for row in rows]


def _page_through_and_filter(driver, start_url: str, big_db, screenshot: str) -> None:
    """Every latent is reachable page by page; the dead and dense filters hide what they say."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    click = lambda element_id: driver.find_element(By.ID, element_id).click()  # noqa: E731
    driver.get(start_url)
    wait.until(lambda d: len(_rows(d)) == INDEX_PAGE_SIZE)
    alive = [i for i in range(big_db.n) if i not in big_db.dense + big_db.dead]
    visible = alive + big_db.dead  # by frequency: index order, then the dead (frequency 0)
    pages = -(-len(visible) // INDEX_PAGE_SIZE)
    assert _rows(driver) == visible[:INDEX_PAGE_SIZE]
    assert driver.find_element(By.ID, "page-info").text.startswith(f"page 1 of {pages}")
    assert driver.find_element(By.ID, "page-prev").get_attribute("disabled") is not None
    for page in range(1, 5):
        click("page-next")
        wait.until(lambda d, p=page: _rows(d)[:1] == [visible[p * INDEX_PAGE_SIZE]])
    assert _rows(driver) == visible[4 * INDEX_PAGE_SIZE : 5 * INDEX_PAGE_SIZE]
    assert 2_400 in _rows(driver)  # beyond the 2,000 rows the index used to stop at
    click("page-last")
    wait.until(lambda d: _rows(d) == visible[(pages - 1) * INDEX_PAGE_SIZE :])
    assert set(big_db.dead) <= set(_rows(driver))  # dead latents are shown by default
    assert driver.find_element(By.ID, "page-next").get_attribute("disabled") is not None
    click("hide-dead")
    wait.until(lambda d: _rows(d) == alive[:INDEX_PAGE_SIZE])  # back on page 1
    click("page-last")
    wait.until(lambda d: _rows(d) == alive[(pages - 1) * INDEX_PAGE_SIZE :])
    count = driver.find_element(By.ID, "count").text
    assert count == f"{len(alive)} of {big_db.n} latents (hidden: 2 dead, 3 dense)"
    search = driver.find_element(By.ID, "search")
    search.send_keys(str(big_db.dead[0]))
    wait.until(lambda d: _rows(d) == [])  # the dead latent, found by its id, stays hidden
    click("hide-dead")
    wait.until(lambda d: _rows(d) == [big_db.dead[0]])
    search.clear()
    search.send_keys(f"tok{big_db.dense[0]}")  # its top token (a bare "0" matches "tok10" too)
    wait.until(lambda d: _rows(d) == [])
    click("hide-dense")
    wait.until(lambda d: _rows(d) == [big_db.dense[0]])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / screenshot))


def test_static_index_pages_and_filters_from_file_url(browser, big_db, tmp_path):
    with FeatureDB(big_db.path) as db:
        html = render_index(db.meta(), db.latents(), Links("index.html", "latents/{i}.html"), False)
    index = tmp_path / "index.html"
    index.write_text(html, encoding="utf-8")
    _page_through_and_filter(browser, index.resolve().as_uri(), big_db, "index-static-paged.png")


def test_served_index_pages_and_filters(browser, big_db):
    with running_server(create_app(big_db.path)) as url:
        _page_through_and_filter(browser, f"{url}/", big_db, "index-served-paged.png")
