"""Batch runs: papermill over the four notebooks, one kernel each, against servers this process owns.

The servers and the memory sampler are started here, once, and every notebook attaches to them; they are
stopped on every exit path. Executed notebooks are kept even when one fails, and the report is exported
with the code hidden.
"""

from __future__ import annotations

import collections
import logging
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from servelab.errors import OutputsError, ServelabError
from servelab.manifest import read_manifest, read_params
from servelab.measure.load import ensure_file_descriptors
from servelab.measure.sweep import connections_needed, estimate_seconds, plan_points
from servelab.params import Params, load_params
from servelab.records import MANIFEST_FILE, POINTS_FILE, REQUESTS_FILE, latest_points
from servelab.report.html import export_report, write_index
from servelab.secrets import redact_file
from servelab.serve.deploy import stop_on_signals
from servelab.session import REPO, create_run, lab

log = logging.getLogger(__name__)

NOTEBOOKS = ("01_deploy", "02_sweep", "03_gpu_memory", "04_report")
NOTEBOOK_DIR = REPO / "notebooks"
POINT_ID = re.compile(rb'"point_id": "([^"]*)"')


class NotebookFailed(ServelabError):
    """A notebook raised; its executed copy, with the error in place, is kept in the run folder."""


@dataclass
class RunResult:
    run_dir: Path
    report: Path


def kernel_name() -> str:
    """The project's kernelspec when installed (`make install` does), else the default python3 kernel."""
    try:
        KernelSpecManager().get_kernel_spec("servelab")
        return "servelab"
    except NoSuchKernel:
        return "python3"


def describe_grid(params: Params) -> str:
    """The lines `--dry-run` prints: every point and a rough duration."""
    points = plan_points(params)
    lines = [f"{len(points)} load point(s) for {len(params.deployments)} deployment(s):"]
    lines += [f"  {point.label}" for point in points]
    minutes = estimate_seconds(params) / 60
    lines.append(f"estimated sweep time: about {minutes:.1f} min, plus engine start-up")
    return "\n".join(lines)


class PointProgress:
    """A progress bar over the grid's points, fed by `points.jsonl` while the sweep runs in its own kernel; within a
    point, its postfix counts the point's requests as `requests.jsonl` grows, so a long point shows it is moving."""

    def __init__(self, params: Params, run_dir: Path, interval_s: float = 0.5) -> None:
        # Absolute: papermill runs each notebook inside `chdir(notebooks/)`, and a relative run folder would then
        # point nowhere, so the bar would stand at 0 until the end.
        self.run_dir = run_dir.resolve()
        self.interval_s = interval_s
        self._offset = 0
        self._requests: collections.Counter[str] = collections.Counter()
        total = sum(len(point.deployments) for point in plan_points(params))
        self.bar = tqdm(total=total, desc="load points", unit="point", initial=self._finished(), dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="servelab-progress", daemon=True)
        # Log lines go above the bar, not glued to its end.
        self._logging = logging_redirect_tqdm()

    def _finished(self) -> int:
        if not (self.run_dir / POINTS_FILE).exists():
            return 0
        return sum(point.status != "started" for point in latest_points(self.run_dir).values())

    def _running(self) -> str | None:
        """The point the sweep is in now: the last one started and not yet ended."""
        if not (self.run_dir / POINTS_FILE).exists():
            return None
        started = [point_id for point_id, point in latest_points(self.run_dir).items() if point.status == "started"]
        return started[-1] if started else None

    def _count_new_requests(self) -> None:
        """Count the whole lines appended to requests.jsonl since the last look, per point."""
        path = self.run_dir / REQUESTS_FILE
        if not path.exists():
            return
        with open(path, "rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(whole)
        self._requests.update(match.decode("utf-8", "replace") for match in POINT_ID.findall(whole))

    def _refresh(self) -> None:
        self._count_new_requests()
        running = self._running()
        if running is not None:
            self.bar.set_postfix_str(f"{running}: {self._requests[running]} requests", refresh=False)
        self.bar.update(self._finished() - self.bar.n)
        self.bar.refresh()

    def _follow(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._refresh()
            except OSError as error:  # a file being replaced under us: the next look will do
                log.debug("progress: %s", error)

    def __enter__(self) -> PointProgress:
        self._logging.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.bar.set_postfix_str("", refresh=False)
        self.bar.update(self._finished() - self.bar.n)
        self.bar.close()
        self._logging.__exit__(None, None, None)


def kernel_config(sockets: Path) -> object:
    """Kernels talk to papermill over Unix sockets in `sockets`: no TCP port is opened, so the kernel has nothing to
    warn about ('running over TCP without encryption') and nothing listens on the network."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc", "ip": str(sockets / "kernel")}})


def execute_notebook(
    name: str, run_dir: Path, params_path: Path, outputs_dir: Path, extra: dict[str, object] | None = None
) -> Path:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    executed = run_dir / "notebooks" / f"{name}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="servelab-kernel-") as sockets:
        try:
            papermill.execute_notebook(
                str(NOTEBOOK_DIR / f"{name}.ipynb"),
                str(executed),
                parameters={
                    "params_path": str(params_path.resolve()),
                    "run_dir": str(run_dir.resolve()),
                    "outputs_dir": str(outputs_dir.resolve()),
                    **(extra or {}),
                },
                kernel_name=kernel_name(),
                cwd=str(NOTEBOOK_DIR),
                progress_bar=False,
                log_output=False,
                config=kernel_config(Path(sockets)),
            )
        except PapermillExecutionError as error:
            redact_file(executed)
            raise NotebookFailed(
                f"notebook {name} failed: {error.ename}: {error.evalue}\nthe executed notebook is kept at {executed}"
            ) from None
    redact_file(executed)
    return executed


def reanalyse(run_dir: Path, outputs_dir: Path) -> Path:
    """Execute 03_gpu_memory (analysis only) and 04_report on a recorded run folder, export its HTML, and return
    the report's path. Nothing is deployed or measured: this is for runs brought back from another machine."""
    if not (run_dir / MANIFEST_FILE).is_file():
        raise OutputsError(f"{run_dir} is not a run folder (no {MANIFEST_FILE}); give outputs/<run-id>")
    params_path = Path(read_manifest(run_dir).get("params_file") or "params")
    execute_notebook("03_gpu_memory", run_dir, params_path, outputs_dir, {"analyse_only": True})
    execute_notebook("04_report", run_dir, params_path, outputs_dir)
    report = export_report(run_dir)
    write_index(outputs_dir)
    return report


def run(
    params_path: str | Path,
    outputs_dir: str | Path = "outputs",
    resume: str | None = None,
    notebooks: tuple[str, ...] = NOTEBOOKS,
) -> RunResult:
    """Run the notebooks over one params file; `resume` names a run id (or folder) to complete."""
    outputs = Path(outputs_dir)
    run_dir = None
    if resume:
        run_dir = Path(resume) if Path(resume).is_dir() else outputs / resume
        if not run_dir.is_dir():
            raise ServelabError(f"--resume {resume}: no run folder {run_dir}; `ls {outputs}` lists the runs")
    params = read_params(run_dir) if run_dir is not None and (run_dir / MANIFEST_FILE).is_file() else load_params(params_path)
    ensure_file_descriptors(connections_needed(params))  # before the run folder exists: nothing half-made
    run_dir = create_run(params, params_path, run_dir, outputs)
    if not (run_dir / "params.yaml").exists():
        shutil.copy2(params_path, run_dir / "params.yaml")
        redact_file(run_dir / "params.yaml")
    log.info("run folder: %s", run_dir)
    with stop_on_signals(), lab(params, run_dir), PointProgress(params, run_dir):
        for name in notebooks:
            log.info("executing notebook %s", name)
            execute_notebook(name, run_dir, Path(params_path), outputs)
    report = export_report(run_dir)
    write_index(outputs)
    return RunResult(run_dir=run_dir, report=report)


def search(params_path: str | Path, outputs_dir: str | Path = "outputs") -> Path:
    """`servelab search`: deploy the params' servers, search each for the highest load meeting `slo` (see
    servelab.checks.search), and return the run folder (summary.csv with goodput per step, search.json)."""
    from servelab.checks.search import run_search
    from servelab.measure.clients import Target
    from servelab.measure.sweep import prompt_tokenizers

    outputs = Path(outputs_dir)
    params = load_params(params_path)
    if params.slo is None:
        raise ServelabError(f"{params_path}: servelab search needs SLOs: add e.g. `slo: {{ttft_ms: 500, itl_ms: 50}}`")
    run_dir = create_run(params, params_path, None, outputs)
    shutil.copy2(params_path, run_dir / "params.yaml")
    with stop_on_signals(), lab(params, run_dir) as session, prompt_tokenizers(session.fleet) as tokenizers:
        run_search(params, run_dir, {server.name: Target.for_server(server) for server in session.fleet}, tokenizers)
    write_index(outputs)
    return run_dir

