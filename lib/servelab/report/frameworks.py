"""The framework table as a page: `servelab compare RUN... --html out.html` sets frameworks, models and settings
side by side from one run folder or several, each row with its conditions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from servelab.analyse.plots import frameworks as frameworks_chart
from servelab.checks.compare import framework_table
from servelab.report.display import Section, formatter_for
from servelab.report.display import table_html as html_table
from servelab.report.html import _write, check_figures, render


def framework_page(run_dirs: Sequence[Path]) -> str:
    """The page's HTML: the conditions, the side-by-side table, and the chart of best throughput per condition set."""
    from markupsafe import Markup

    table, conditions = framework_table(run_dirs)
    blocks = []
    intro = Section("How to read it", slug="how-to-read")
    intro.text(
        "Each row is one deployment in one run, under its own load with its neighbours idle. Latencies are at the load "
        "where that deployment reached its best output tok/s. Rows are ranked by best output tok/s only against rows "
        "measured under the same conditions (the letter in the first column)."
    )
    if len(conditions) > 1:
        differ = [key for key in conditions.columns[1:] if conditions[key].nunique() > 1]
        intro.text(
            f"These runs were measured under {len(conditions)} different conditions (they differ in {', '.join(differ)}): "
            "their rows are listed side by side but not ranked against each other."
        )
    missing = table[table.get("at load", "") == "not recorded"] if "at load" in table else table.iloc[0:0]
    for _, row in missing.iterrows():
        intro.text(
            f"{row['deployment']} ({row['run']}): no throughput or latency recorded in that folder (no summary.csv or "
            "requests.jsonl); its memory and settings are shown."
        )
    blocks.append(intro)
    blocks.append(Section("Conditions", slug="conditions").add(html_table(conditions)))
    described = [c for c in ("model", "settings", "run") if c in table]
    side = Section("Side by side", slug="side-by-side").add(html_table(table.drop(columns=described)))
    side.text("Energy is the device's energy split to each deployment by its SM utilization over the whole run, over "
              "the output tokens its own points generated; shown where NVML measured it.")
    blocks.append(side)
    what = Section("What each row ran", slug="settings")
    blocks.append(what.add(html_table(table[["deployment", "framework", *described]])))
    blocks.append(Section("Best throughput", slug="best-throughput").add(frameworks_chart(table)))
    runs = sorted({str(run) for run in table["run"]})
    return render("compare.html.j2", runs=runs, blocks=[Markup(b._repr_html_()) for b in blocks])


def write_framework_page(run_dirs: Sequence[Path], destination: Path) -> Path:
    page = framework_page(run_dirs)
    check_figures(page, destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    return _write(destination, page)


TEXT_COLUMNS = ("conditions", "rank", "deployment", "framework", "best output (tok/s)", "at load", "TTFT p50 (ms)", "TPOT p50 (ms)")


def framework_text(run_dirs: Sequence[Path]) -> str:
    """The framework table's main columns as plain text for the console, formatted as on the page."""
    table, _ = framework_table(run_dirs)
    shown = table[[c for c in table.columns if c in TEXT_COLUMNS or "peak" in c]].copy()
    for column in shown.columns:
        format_cell = formatter_for(column) or str
        shown[column] = [format_cell(value) for value in shown[column]]
    return shown.replace("\u00a0", " ", regex=True).to_string(index=False)
