"""HTML for stakeholders: the report (the executed 04_report notebook's outputs in servelab's own page, code hidden),
a code-visible copy of each executed notebook, and an index of every run. Pages are jinja2 templates."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd

from servelab.errors import OutputsError
from servelab.records import MANIFEST_FILE
from servelab.report.display import table_html
from servelab.secrets import redact

REPORT_FILE = "report.html"
TEMPLATES = Path(__file__).parent / "templates"
# nbconvert's page loads require.js and MathJax from a CDN; the copies need neither and must open offline.
REMOTE_SCRIPT = re.compile(r'<script src="https?://[^"]*"[^>]*>\s*</script>')
SECTION = re.compile(r'<section class="report-section" id="([^"]+)"><h2>(.*?)</h2>')
CHART_CLASS = "servelab-chart"
"""The class of every chart's <figure> (`analyse.plots.Chart`); kept here too so that `servelab run` starts without
importing matplotlib."""
CHART = re.compile(rf'<figure class="{CHART_CLASS}"><img src="data:image/png;base64,([^"]*)" alt="([^"]*)">')
UNRENDERED_FIGURE = re.compile(r"^<(Figure|Chart)\b|^Chart\(")
MIN_PNG_BASE64 = 200
"""A PNG of a real chart is kilobytes; anything shorter is a blank or broken image."""


def _environment():  # type: ignore[no-untyped-def]
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["j2"]))


def css() -> str:
    return (TEMPLATES / "report.css").read_text(encoding="utf-8")


def render(template: str, **values: object) -> str:
    """A page from servelab's templates; `markupsafe.Markup` values go in as HTML, everything else escaped."""
    from markupsafe import Markup

    return _environment().get_template(template).render(css=Markup(css()), **values)


def _write(destination: Path, page: str) -> Path:
    try:
        destination.write_text(redact(page), encoding="utf-8")
    except OSError as error:
        raise OutputsError(f"cannot write {destination}: {error.strerror}; free space or fix permissions") from None
    return destination


def export_html(notebook: Path, destination: Path, hide_code: bool = True) -> Path:
    """Convert an executed notebook to one self-contained HTML file (images inline), code hidden by default."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = hide_code
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    body = REMOTE_SCRIPT.sub("", body)
    title = html.escape(f"servelab: {notebook.parent.parent.name}")
    body = body.replace("<title>Notebook</title>", f"<title>{title}</title>", 1)
    return _write(destination, body)


def report_blocks(notebook: Path) -> tuple[str, list[str]]:
    """The executed report notebook as (intro, blocks): its first markdown cell, then every markdown cell and every
    HTML output in order. Streams (warnings on stderr) stay in the executed notebook. A figure that did not render,
    an image without alt text or a cell that raised stops the export."""
    import nbformat
    from nbconvert.filters import markdown2html

    cells = nbformat.read(notebook, as_version=4).cells
    intro, blocks = "", []
    for cell in cells:
        if cell.cell_type == "markdown":
            rendered = markdown2html(cell.source)
            if intro:
                blocks.append(rendered)
            else:
                intro = rendered
            continue
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                raise OutputsError(f"{notebook} holds an error ({output.get('ename')}: {output.get('evalue')}): run it again")
            data = output.get("data", {})
            if "text/html" in data:
                blocks.append("".join(data["text/html"]))
            elif "image/png" in data:
                raise OutputsError(
                    f"{notebook}: a figure was shown without alt text or caption; return it as a servelab Chart "
                    "(servelab.analyse.plots) so the report can describe it"
                )
            elif UNRENDERED_FIGURE.search("".join(data.get("text/plain", ""))):
                raise OutputsError(f"{notebook}: a figure did not render ({''.join(data['text/plain'])[:60]})")
    return intro, blocks


def check_figures(page: str, source: Path) -> int:
    """The number of charts in `page`; raises when one has no image or no alt text (a report never lacks a figure)."""
    figures = page.count(f'<figure class="{CHART_CLASS}"')
    found = CHART.findall(page)
    broken = [alt for data, alt in found if len(data) < MIN_PNG_BASE64 or not alt.strip()]
    if len(found) != figures or broken:
        raise OutputsError(
            f"{source}: {figures - len(found) + len(broken)} of {figures} figure(s) came out without an image or alt "
            "text; the report is not written without its figures"
        )
    return figures


def export_report(run_dir: Path) -> Path:
    """`report.html` from the executed 04_report, and a code-visible HTML of each executed notebook beside it."""
    from markupsafe import Markup

    executed = run_dir / "notebooks"
    copies = []
    for notebook in sorted(executed.glob("*.ipynb")):
        copies.append((notebook.stem, f"notebooks/{export_html(notebook, notebook.with_suffix('.html'), hide_code=False).name}"))
    source = executed / "04_report.ipynb"
    if not source.exists():
        raise OutputsError(f"{source} is missing: run the 04_report notebook first (`servelab run` does)")
    intro, blocks = report_blocks(source)
    contents = [(slug, html.unescape(title)) for block in blocks for slug, title in SECTION.findall(block)]
    page = render(
        "report.html.j2", run_id=run_dir.name, intro=Markup(intro), blocks=[Markup(b) for b in blocks],
        contents=contents, notebooks=copies,
    )
    banner = outcome_banner(run_dir)
    if banner:
        page = re.sub(r"(<body[^>]*>)", lambda match: match.group(1) + banner, page, count=1)
    check_figures(page, source)
    return _write(run_dir / REPORT_FILE, page)


def outcome_banner(run_dir: Path) -> str:
    """A line for the top of the report when the run failed as a whole (manifest.json's `outcome`), else ''."""
    try:
        outcome = json.loads((run_dir / MANIFEST_FILE).read_text(encoding="utf-8")).get("outcome") or {}
    except (OSError, ValueError):
        return ""
    if outcome.get("status") != "failed":
        return ""
    reason = html.escape(str(outcome.get("reason") or "see the failures table"))
    return (
        '<p id="run-outcome" style="background:#fde2e1;border:2px solid #b3261e;padding:0.6em 1em;font-weight:bold">'
        f"This run FAILED: {reason}. Its figures describe errors, not a server's performance.</p>"
    )


def write_index(outputs_dir: Path) -> Path:
    """`outputs/index.html`: one row per run, newest first, linking its report."""
    from markupsafe import Markup

    rows = []
    for run_dir in sorted((p for p in outputs_dir.glob("*/") if (p / MANIFEST_FILE).exists()), reverse=True):
        manifest = json.loads((run_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        report = run_dir / REPORT_FILE
        name = html.escape(run_dir.name)
        link = f'<a href="{name}/{REPORT_FILE}">report</a>' if report.exists() else "no report yet"
        gpu = manifest.get("gpu")
        gpu_text = "none" if gpu == "none" or not gpu else ", ".join(d["name"] for d in gpu.get("devices", []))
        engines = ", ".join(sorted({str(e.get("framework", "?")) for e in manifest.get("engines", {}).values()}))
        rows.append({"run": name, "params": html.escape(str(manifest.get("params_file", ""))), "engines": html.escape(engines),
                     "GPU": html.escape(gpu_text), "report": link})
    frame = pd.DataFrame(rows, columns=["run", "params", "engines", "GPU", "report"])
    table = table_html(frame, escape=False) if rows else "<p>No runs yet: `make demo` makes one.</p>"
    return _write(outputs_dir / "index.html", render("index.html.j2", table=Markup(table)))
