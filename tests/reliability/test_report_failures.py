"""The report of a run that went wrong marks its failed and partial points and gives error rates by class.

The run is real: a sweep against the reference emitter (seeded 503s) behind tools/faultproxy (a reset every
third request), killed by SIGKILL in the middle of its third point. The report is the real 04_report notebook,
executed by papermill and exported to report.html, and the test reads the failures table out of that HTML.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import textwrap
from html.parser import HTMLParser

import pytest
from fault_harness import PYTHON, REPO, emitter, faultproxy, sweep_params, write_yaml
from servelab.records import read_requests
from servelab.report.html import export_report
from servelab.report.tables import PARTIAL
from servelab.run import execute_notebook
from servelab.session import open_run

pytestmark = pytest.mark.slow

KILL_MID_THIRD_POINT = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {harness!r})
from fault_harness import fleet_at
from servelab import records
from servelab.params import load_params
from servelab.measure.sweep import run_sweep

real_write = records.JsonlWriter.write
third = []

def write(self, record):
    real_write(self, record)
    if getattr(record, "point_id", "").endswith("concurrency-3") and hasattr(record, "request_index"):
        third.append(record)
        if len(third) == 3:
            os.kill(os.getpid(), signal.SIGKILL)

records.JsonlWriter.write = write
run = Path({run!r})
run_sweep(load_params({params!r}), run, fleet_at(run, {url!r}, {pid}), progress=False)
"""


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None


def test_report_html_marks_failed_and_partial_points_with_error_rates_by_class(tmp_path):
    """Expectation: report.html's 'Failures' table has one row per failed or partial point: the two
    finished points are 'failed' (their error rate is above max_error_rate 0.2), the point the crash cut short
    is 'partial: never finished', and each row gives the error rate overall and per class
    (connection_reset, http_5xx), equal to the records on disk (failed of that class / measured requests)."""
    params = sweep_params(
        load=[{"kind": "concurrency", "values": [1, 2, 3]}], requests_per_point=12, policy={"max_error_rate": 0.2}
    )
    params_path = write_yaml(tmp_path / "broken.yaml", params)
    outputs = tmp_path / "outputs"
    params, run_dir = open_run(params_path, outputs_dir=outputs)
    with emitter("--status", "503", "--fail-rate", "0.3", "--seed", "5") as (upstream, _), faultproxy(
        upstream, "reset-after=1", every=3
    ) as (url, proxy):
        script = KILL_MID_THIRD_POINT.format(
            harness=str(REPO / "tests" / "reliability"), run=str(run_dir), params=str(params_path), url=url, pid=proxy.pid
        )
        killed = subprocess.run([PYTHON, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    execute_notebook("04_report", run_dir, params_path, outputs)
    page = Tables()
    page.feed(export_report(run_dir).read_text(encoding="utf-8"))
    (table,) = [t for t in page.tables if t and "error rate" in t[0]]
    header = table[0]
    rows = {row[0]: dict(zip(header[1:], row[1:], strict=False)) for row in table[1:] if row and row[0].startswith("fake/")}
    assert [rows[p]["status"] for p in sorted(rows)] == ["failed", "failed", PARTIAL]
    measured = [r for r in read_requests(run_dir) if not r.warmup]
    for point_id, row in rows.items():
        mine = [r for r in measured if r.point_id == point_id]
        by_class = collections.Counter(r.error_class for r in mine if not r.ok)
        assert int(row["requests"]) == len(mine) and int(row["errors"]) == sum(by_class.values())
        assert fraction(row["error rate"]) == pytest.approx(sum(by_class.values()) / len(mine), abs=0.0005)
        for error_class in ("connection_reset", "http_5xx"):
            assert fraction(row[f"error rate: {error_class}"]) == pytest.approx(by_class[error_class] / len(mine), abs=0.0005)
    assert sum(fraction(rows[p]["error rate: connection_reset"]) > 0 for p in rows) >= 2
    assert sum(fraction(rows[p]["error rate: http_5xx"]) > 0 for p in rows) >= 2


def fraction(cell: str) -> float:
    """A rate as the report shows it ('33.3 %') as a fraction (0.333)."""
    assert cell.endswith(" %"), f"a rate is shown as a percentage, got {cell!r}"
    return float(cell.removesuffix(" %")) / 100
