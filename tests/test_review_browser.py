"""The review desk in a real browser: Debian's chromium, headless, driven by Selenium through chromedriver.

``curate review --json --no-browser`` runs as a subprocess (the real CLI and server); the page gets one decision by a
click and one by a key, is reloaded (both decisions are still there), and commits with its button; the new version's
rows are then checked. Skips with the reason when selenium, chromium or chromedriver is missing (`make browser`
installs them where apt-get is available). Explicit waits with generous timeouts, no timing assertions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_review_desk import plant

ROOT = Path(__file__).resolve().parents[1]
WAIT = 90  # seconds: the machine may be loaded; a wait returns as soon as its condition holds


def _driver(tmp_path: Path) -> Any:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/lib/chromium/chromedriver",) if os.path.exists(p)), None)
    if browser is None or driver is None:
        pytest.skip("chromium or chromedriver is not installed (`make browser` installs chromium and chromium-driver via apt-get)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    for flag in flags:
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver))


def test_review_in_headless_chromium(workspace: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ids, vid = (p := plant(workspace))["ids"], p["vid"]
    drv = _driver(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-c", "from curate.cli import main; main()"]
    cmd = [*cli, "review", "--json", "--no-browser", "--causes", "glare", "-w", str(workspace.root)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()  # type: ignore[union-attr]
        assert line, server.stderr.read()  # type: ignore[union-attr]
        url = json.loads(line)["url"]
        wait = WebDriverWait(drv, WAIT)
        drv.get(url)

        def row(name: str) -> Any:
            return drv.find_element(By.CSS_SELECTOR, f'tr[data-sid="{ids[name]}"]')

        def decided(name: str, decision: str) -> None:
            wait.until(lambda d: row(name).get_attribute("data-decision") == decision)

        # worst first: cat_000, dog_000, cat_001, odd_000; a click on the first row's exclude button
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.item")) == 4)
        row("cat_000").find_element(By.CSS_SELECTOR, 'button[data-cause="blurry"]').click()
        wait.until(lambda d: "blurry" in row("cat_000").get_attribute("data-tags"))
        row("cat_000").find_element(By.CSS_SELECTOR, 'button[data-act="exclude"]').click()
        decided("cat_000", "exclude")
        # the decision moved the focus to the next row: a key accepts its suggestion (dog_000 -> cat)
        wait.until(lambda d: d.switch_to.active_element.get_attribute("data-sid") == ids["dog_000"])
        ActionChains(drv).send_keys("a").perform()
        decided("dog_000", "accept")
        drv.refresh()
        decided("cat_000", "exclude")
        decided("dog_000", "accept")
        assert row("dog_000").get_attribute("data-label") == "cat"
        assert "on" in row("cat_000").find_element(By.CSS_SELECTOR, 'button[data-cause="blurry"]').get_attribute("class")
        shot = ROOT / "docs" / "review-desk.png"
        if os.environ.get("CURATE_SCREENSHOT"):  # the README's picture: CURATE_SCREENSHOT=1 pytest tests/test_review_browser.py
            drv.save_screenshot(str(shot))
        drv.find_element(By.ID, "commit").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-committed"))
        new = drv.find_element(By.TAG_NAME, "body").get_attribute("data-committed")
    finally:
        drv.quit()
        server.terminate()
        server.wait(timeout=WAIT)
    assert workspace.head() == new and workspace.info(new)["parent"] == vid
    rows = {r["sample_id"]: r for r in workspace.samples(new).to_pylist()}
    c0, d0 = rows[ids["cat_000"]], rows[ids["dog_000"]]
    assert (c0["status"], c0["excluded_by"], c0["reason"], c0["review_tags"]) == ("excluded", "review", "review:blurry", ["blurry"])
    assert (d0["status"], d0["label"], d0["label_source"], d0["given_label"]) == ("ok", "cat", "review", "dog")
    assert sum(r["review_decision"] is not None for r in rows.values()) == 2
