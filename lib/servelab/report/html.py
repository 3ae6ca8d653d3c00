"""HTML for stakeholders: the executed report notebook with its code hidden, and an index of every run."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from servelab.errors import OutputsError
from servelab.records import MANIFEST_FILE
from servelab.secrets import redact

REPORT_FILE = "report.html"
# nbconvert's page loads require.js and MathJax from a CDN; the report needs neither and must open offline.
REMOTE_SCRIPT = re.compile(r'<script src="https?://[^"]*"[^>]*>\s*</script>')


def export_html(notebook: Path, destination: Path, hide_code: bool = True, banner: str = "") -> Path:
    """Convert an executed notebook to one self-contained HTML file (images inline), code hidden by default;
    `banner` (HTML) goes first in the page."""
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
    if banner:
        body = re.sub(r"(<body[^>]*>)", lambda match: match.group(1) + banner, body, count=1)
    try:
        destination.write_text(redact(body), encoding="utf-8")
    except OSError as error:
        raise OutputsError(f"cannot write {destination}: {error.strerror}") from None
    return destination


def export_report(run_dir: Path) -> Path:
    """`report.html` from the executed 04_report, and a code-visible HTML of each executed notebook."""
    executed = run_dir / "notebooks"
    for notebook in sorted(executed.glob("*.ipynb")):
        export_html(notebook, notebook.with_suffix(".html"), hide_code=False)
    source = executed / "04_report.ipynb"
    if not source.exists():
        raise OutputsError(f"{source} is missing: run the 04_report notebook first (`servelab run` does)")
    return export_html(source, run_dir / REPORT_FILE, banner=outcome_banner(run_dir))


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
    rows = []
    for run_dir in sorted((p for p in outputs_dir.glob("*/") if (p / MANIFEST_FILE).exists()), reverse=True):
        manifest = json.loads((run_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        report = run_dir / REPORT_FILE
        link = f'<a href="{html.escape(run_dir.name)}/{REPORT_FILE}">report</a>' if report.exists() else "no report yet"
        gpu = manifest.get("gpu")
        gpu_text = "none" if gpu == "none" else ", ".join(d["name"] for d in gpu.get("devices", []))
        engines = ", ".join(sorted({e.get("framework", "?") for e in manifest.get("engines", {}).values()}))
        rows.append(
            f"<tr><td>{html.escape(run_dir.name)}</td><td>{html.escape(manifest.get('params_file', ''))}</td>"
            f"<td>{html.escape(engines)}</td><td>{html.escape(gpu_text)}</td><td>{link}</td></tr>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>servelab runs</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 12px;text-align:left}"
        "tr:nth-child(even){background:#f3f3f3}</style></head><body><h1>servelab runs</h1>"
        "<table><tr><th>run</th><th>params</th><th>engines</th><th>GPU</th><th>report</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
    index = outputs_dir / "index.html"
    try:
        index.write_text(page, encoding="utf-8")
    except OSError as error:
        raise OutputsError(f"cannot write {index}: {error.strerror}; free space or fix permissions") from None
    return index
