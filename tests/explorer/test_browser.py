"""Headless Debian chromium (via Selenium) on the static dashboard (file://) and the served app.

Never downloads a browser: uses the system chromium + chromedriver and skips without them.
Screenshots go to $SAELAB_TEST_ARTIFACTS (default: test-artifacts/ in the repository).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from saelab.analysis import FeatureDB
from saelab.explorer.app import create_app
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
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#latent-rows tr")) == explorer.d_sae)
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
    with running_server(create_app(explorer.run / "features.sqlite", device="cpu")) as url:
        _search_open_and_check(browser, f"{url}/", explorer, "dashboard-served.png")
        assert browser.current_url == f"{url}/latent/{explorer.explained}"
