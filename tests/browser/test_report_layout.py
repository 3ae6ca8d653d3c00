"""The report as a stakeholder reads it, in real headless Chromium at 1280 and 390 px: no cut cell, no bare index
column, no section without its data, alt text on every image, and no page wider than the phone. Two reports:
the demo-sized batch run on the embedded engine (real), and a recorded multi-deployment H200 run (vLLM, three
co-located models; tests/data/recorded/README.md) analysed again under MPLBACKEND=Agg. Screenshots are kept as
test artifacts under outputs/test-artifacts/ and their paths printed."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from test_report_in_chromium import CHROMIUM_FLAGS, REPO, chromium_path

RECORDED = REPO / "tests" / "data" / "recorded"
ARTIFACTS = REPO / "outputs" / "test-artifacts"
PRINT_WIDTH = 720

LAYOUT = """() => {
  const cells = [...document.querySelectorAll('table td, table th')].map(c => c.innerText.trim());
  const cut = cells.filter(t => t.endsWith('...') || t.endsWith('\u2026'));
  const indexColumns = [];
  for (const table of document.querySelectorAll('table')) {
    if (table.querySelector('th.row_heading, th.blank, th.index_name')) indexColumns.push('styler index');
    const rows = [...table.querySelectorAll('tbody tr')];
    const width = rows.length ? rows[0].children.length : 0;
    for (let col = 0; col < width && rows.length > 1; col++) {
      const values = rows.map(r => (r.children[col] || {}).innerText);
      if (values.every((v, i) => v !== undefined && v.trim() === String(i))) indexColumns.push(col);
    }
  }
  const empty = [...document.querySelectorAll('section.report-section')].filter(s => {
    const body = [...s.children].filter(c => c.tagName !== 'H2');
    return !body.some(c => c.innerText.trim().length > 0 || c.querySelector('img'));
  }).map(s => s.id);
  const images = [...document.querySelectorAll('img')].map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0}));
  const sections = [...document.querySelectorAll('section.report-section')].map(s => s.id);
  return {cut, indexColumns, empty, images, sections, width: document.documentElement.scrollWidth,
          text: document.body.innerText};
}"""


def inspect(page_path: Path, name: str) -> dict:
    """Open `page_path` at 1280 px and at 390 px; keep both screenshots and a PDF print; return what the page holds."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    found: dict = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            for width in (1280, 390):
                page = browser.new_page(viewport={"width": width, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
                page.goto(page_path.as_uri(), wait_until="load")
                found[width] = page.evaluate(LAYOUT)
                found[width]["errors"] = errors
                shot = ARTIFACTS / f"{name}-{width}px.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot: {shot}")
                if width == 1280:
                    pdf = ARTIFACTS / f"{name}.pdf"
                    page.pdf(path=str(pdf), format="A4")
                    found["pdf"] = pdf.read_bytes()
                    print(f"printed: {pdf}")
                page.close()
            # A4's printable width is about 720 CSS px: in print media nothing may stick out past it.
            page = browser.new_page(viewport={"width": PRINT_WIDTH, "height": 1000})
            page.goto(page_path.as_uri(), wait_until="load")
            page.emulate_media(media="print")
            found["print_width"] = page.evaluate("document.documentElement.scrollWidth")
            page.close()
        finally:
            browser.close()
    return found


def assert_reads_well(found: dict) -> None:
    for width in (1280, 390):
        page = found[width]
        assert page["errors"] == []
        assert page["cut"] == [], f"cells cut at {width} px: {page['cut'][:5]}"
        assert page["indexColumns"] == [], f"bare index columns at {width} px: {page['indexColumns']}"
        assert page["empty"] == [], f"sections without their data: {page['empty']}"
        assert page["images"] and all(image["alt"].strip() and image["loaded"] for image in page["images"]), page["images"]
    assert found[390]["width"] <= 390, f"the page is {found[390]['width']} px wide on a 390 px screen"
    assert found["pdf"].startswith(b"%PDF") and found["pdf"].count(b"/Type /Page") >= 2
    assert found["print_width"] <= PRINT_WIDTH, f"printed, the page is {found['print_width']} px wide"


@pytest.fixture(scope="module")
def recorded_gpu_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`servelab report` on the recorded three-model vLLM run, with the kernels on matplotlib's Agg backend, as
    benchmarks/gpu_session.sh runs them."""
    from servelab.run import reanalyse

    outputs = tmp_path_factory.mktemp("recorded-outputs")
    run_dir = outputs / "20261201-175639-h100-seed-colocated"
    shutil.copytree(RECORDED / "h200-vllm-colocated-run", run_dir)
    before = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "Agg"
    try:
        return reanalyse(run_dir, outputs)
    finally:
        if before is None:
            os.environ.pop("MPLBACKEND")
        else:
            os.environ["MPLBACKEND"] = before


@pytest.fixture(scope="module")
def recorded_gpu_page(recorded_gpu_report: Path) -> dict:
    return inspect(recorded_gpu_report, "report-recorded-h200-vllm")


@pytest.fixture(scope="module")
def demo_page(batch_run) -> dict:
    return inspect(batch_run.report, "report-demo")


def test_the_demo_report_reads_well_at_1280_and_390_px_and_prints(demo_page):
    assert_reads_well(demo_page)


def test_the_demo_report_has_no_agreement_section_without_a_comparison(demo_page):
    sections = demo_page[1280]["sections"]
    assert sections[:3] == ["answer", "validity", "performance"]
    assert "agreement" not in sections and "vllm bench" not in demo_page[1280]["text"]


def test_the_demo_report_states_success_as_a_percentage_and_loads_as_whole_numbers(demo_page):
    text = demo_page[1280]["text"]
    assert "100 %" in text and "c\u00a0=\u00a02" in text
    assert "=\u00a02.0" not in text


def test_the_recorded_gpu_report_reads_well_at_1280_and_390_px_and_prints(recorded_gpu_page):
    assert_reads_well(recorded_gpu_page)


def test_the_recorded_gpu_report_made_under_agg_has_every_figure(recorded_gpu_report, recorded_gpu_page):
    """Under MPLBACKEND=Agg the kernel shows no matplotlib figure by itself; every chart must still be in the page:
    throughput, latency, the memory timeline and the agreement turns' absence is not a figure (no turns file)."""
    html = recorded_gpu_report.read_text(encoding="utf-8")
    assert html.count('<figure class="servelab-chart">') == 3
    alts = [image["alt"] for image in recorded_gpu_page[1280]["images"]]
    assert any(alt.startswith("Line charts of output tokens per second") for alt in alts)
    assert any(alt.startswith("Line charts of the p50, p90 and p99") for alt in alts)
    assert any(alt.startswith("Stacked area chart of GPU memory read by NVML") for alt in alts)
    copies = sorted((recorded_gpu_report.parent / "notebooks").glob("*.html"))
    assert [copy.stem for copy in copies] == ["03_gpu_memory", "04_report"]
    for copy in copies:  # the executed notebooks beside the report, with their code: their figures are described too
        images = re.findall(r"<img[^>]*>", copy.read_text(encoding="utf-8"))
        assert images and all(re.search(r'alt="[^"]+"', image) for image in images), copy.name


def test_the_recorded_gpu_report_ranks_the_three_models_and_shows_its_agreement(recorded_gpu_page):
    page = recorded_gpu_page[1280]
    assert page["sections"] == ["answer", "validity", "performance", "memory", "agreement", "load-points", "what-ran"]
    text = page["text"]
    assert text.index("tinyllama") < text.index("qwen2.5-3b") < text.index("yi-6b")
    assert "2,793" in text and "Client ceiling" in text and "Schedule lag" in text and "Memory source" in text


def test_the_framework_table_opens_in_chromium_with_both_frameworks(tmp_path):
    from servelab.cli import main

    out = tmp_path / "frameworks.html"
    assert main(["compare", str(RECORDED / "h200-vllm-colocated-run"), str(RECORDED / "h200-sglang-run"), "--html", str(out)]) == 0
    found = inspect(out, "frameworks-recorded-vllm-sglang")
    for width in (1280, 390):
        assert found[width]["cut"] == [] and found[width]["indexColumns"] == [] and found[width]["errors"] == []
        assert found[width]["images"] and all(image["alt"] for image in found[width]["images"])
    assert found[390]["width"] <= 390 and found["print_width"] <= PRINT_WIDTH
    assert "vllm 0.26.0" in found[1280]["text"] and "sglang 0.5.16" in found[1280]["text"]
