"""Screenshot of the review desk on a workspace (the README's picture), with Debian's headless chromium.

    python scripts/screenshot_review.py data/demo-workspace docs/review-desk.png --version 3 --queue label_issues

Starts ``curate review --json --no-browser`` on the workspace, opens its URL in headless chromium (Selenium and
chromedriver, as ``tests/test_review_browser.py``), makes one decision by key so the picture shows one, saves a PNG
and stops the server. The decision is left in the workspace's review journal (``curate review --commit`` would
commit it); pass a scratch copy of the workspace if that matters.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--version", default=None, help="version to review (default HEAD)")
    ap.add_argument("--queue", default="label_issues")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=900)
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cmd = [sys.executable, "-m", "curate.cli", "review", "--json", "--no-browser", "--queue", args.queue,
           "-w", str(args.workspace), *([args.version] if args.version else [])]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    profile = tempfile.mkdtemp(prefix="curate-shot-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
                 f"--window-size={args.width},{args.height}"):  # fmt: skip
        opts.add_argument(flag)
    driver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    try:
        line = server.stdout.readline()  # type: ignore[union-attr]
        if not line:
            sys.exit(f"curate review did not start: {server.stderr.read()}")  # type: ignore[union-attr]
        drv.get(json.loads(line)["url"])
        wait = WebDriverWait(drv, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.item"))
        first = drv.find_element(By.CSS_SELECTOR, "tr.item")
        first.find_element(By.CSS_SELECTOR, 'button[data-cause="mislabeled"]').click()
        ActionChains(drv).send_keys("a").perform()
        wait.until(lambda d: first.get_attribute("data-decision"))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(args.out))
        print(f"wrote {args.out}")
    finally:
        drv.quit()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
