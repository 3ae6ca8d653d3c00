"""The stakeholder report opens in real headless Chromium with no console errors and every plot loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str:
    found = shutil.which("chromium")
    assert found, "Debian's chromium is missing: `make test` installs it through scripts/install-chromium.sh"
    return found


def open_page(path: Path, screenshot: Path) -> dict:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            console_errors: list[str] = []
            page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: console_errors.append(str(error)))
            failed_requests: list[str] = []
            page.on("requestfailed", lambda request: failed_requests.append(request.url))
            page.goto(path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => ({src: i.src.slice(0, 40), complete: i.complete, width: i.naturalWidth}))"
            )
            text = page.inner_text("body")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"console_errors": console_errors, "failed_requests": failed_requests, "images": images, "text": text}


@pytest.fixture(scope="module")
def opened_report(batch_run, tmp_path_factory):
    screenshots = REPO / "outputs" / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    return open_page(batch_run.report, screenshots / "report.png")


def test_report_has_no_console_errors_or_failed_requests(opened_report):
    assert opened_report["console_errors"] == []
    assert opened_report["failed_requests"] == []


def test_every_plot_image_in_the_report_loaded(opened_report):
    images = opened_report["images"]
    assert len(images) >= 4, f"expected the throughput, latency, memory and language plots, got {len(images)} images"
    assert all(image["complete"] and image["width"] > 0 for image in images), images


def test_report_answers_first_with_the_ranked_table_and_shows_no_code(opened_report):
    text = opened_report["text"]
    assert "Which deployment gives what" in text
    assert "best output (tok/s)" in text
    assert text.index("Which deployment gives what") < text.index("Can these numbers be trusted?")
    assert "import servelab" not in text


def test_runs_index_opens_and_links_the_report(batch_run, tmp_path):
    opened = open_page(batch_run.run_dir.parent / "index.html", tmp_path / "index.png")
    assert opened["console_errors"] == []
    assert batch_run.run_dir.name in opened["text"]
