"""Batch runs: papermill over the four notebooks, one kernel each, against servers this process owns.

The servers and the memory sampler are started here, once, and every notebook attaches to them; they are
stopped on every exit path. Executed notebooks are kept even when one fails, and the report is exported
with the code hidden.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from servelab.errors import OutputsError, ServelabError
from servelab.manifest import read_manifest, read_params, update_manifest
from servelab.measure.load import ensure_file_descriptors
from servelab.measure.sweep import connections_needed, estimate_seconds, plan_points
from servelab.params import Params, load_params
from servelab.preflight import check_memory, check_prompts_file
from servelab.records import MANIFEST_FILE, POINTS_FILE, REQUESTS_FILE, latest_points
from servelab.report.html import export_report, write_index
from servelab.secrets import redact_file, redact_tree, use_run_secrets
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
    failure: str | None = None
    """Why the run failed as a whole (its error rate passed policy.max_error_rate), or None."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: carries the run folder, so the message can name the id that `--resume` takes."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir.name)
        self.run_dir = run_dir


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


class ConsoleOrNothing:
    """stderr for the progress bar, or nothing once it is gone. tqdm takes its lock, writes, and releases it
    without a `finally`: a write that raises (the reader of a piped stderr went away) leaves the lock held, and
    the next update waits for ever, servers and all. Here a failed write is dropped instead."""

    def __init__(self) -> None:
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return sys.stderr.write(text)
            except (OSError, ValueError):  # a broken pipe, or a closed file
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                self.broken = True


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
        self.bar = tqdm(total=total, desc="load points", unit="point", initial=self._finished(), dynamic_ncols=True, file=ConsoleOrNothing())
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


def kernel_config(sockets: Path, stderr_log: Path | None = None) -> object:
    """Kernels talk to papermill over Unix sockets in `sockets`: no TCP port is opened, so the kernel has nothing to
    warn about ('running over TCP without encryption') and nothing listens on the network. With `stderr_log`, what a
    kernel prints on its own stderr goes there instead of the console (on Ctrl-C, ZMQ's report of the teardown)."""
    from traitlets.config import Config

    config = Config({"KernelManager": {"transport": "ipc", "ip": str(sockets / "kernel")}})
    if stderr_log is not None:
        from servelab.kernels import KernelWithLoggedStderr

        config.NotebookClient.kernel_manager_class = KernelWithLoggedStderr
        config.KernelWithLoggedStderr.stderr_path = str(stderr_log)
    return config


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
                config=kernel_config(Path(sockets), run_dir / "logs" / "kernels.log"),
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
    total_mib: float | None = None,
    dotenv: Path | None = Path(".env"),
) -> RunResult:
    """Run the notebooks over one params file; `resume` names a run id (or folder) to complete.

    Before anything starts, the prompts file and the memory plan are checked (against `total_mib`, else the local
    GPU); `dotenv`'s values reach the engines, and every secret_env and .env value is redacted from the run folder."""
    outputs = Path(outputs_dir)
    run_dir = None
    if resume:
        run_dir = Path(resume) if Path(resume).is_dir() else outputs / resume
        if not run_dir.is_dir():
            raise ServelabError(f"--resume {resume}: no run folder {run_dir}; `ls {outputs}` lists the runs")
    params = read_params(run_dir) if run_dir is not None and (run_dir / MANIFEST_FILE).is_file() else load_params(params_path)
    # Before the run folder exists: nothing half-made, no server started.
    check_prompts_file(params, str(params_path), also_from=NOTEBOOK_DIR)
    check_memory(params, total_mib)
    ensure_file_descriptors(connections_needed(params))
    secrets = use_run_secrets((name for d in params.deployments for name in d.secret_env), dotenv)
    run_dir = create_run(params, params_path, run_dir, outputs)
    try:
        if not (run_dir / "params.yaml").exists():
            # The data, not the file: a comment (where a pasted key may hide) is not copied, and the file is not
            # read again.
            write_params_copy(params, run_dir)
        log.info("run folder: %s", run_dir)
        try:
            with quiet_interrupt(), stop_on_signals(), lab(params, run_dir), PointProgress(params, run_dir):
                for name in notebooks:
                    log.info("executing notebook %s", name)
                    execute_notebook(name, run_dir, Path(params_path), outputs)
        except KeyboardInterrupt:
            raise RunInterrupted(run_dir) from None
        failure = record_outcome(params, run_dir)
        report = export_report(run_dir)
        write_index(outputs)
    finally:
        redact_tree(run_dir, secrets)
        redact_file(outputs / "index.html", secrets)
    return RunResult(run_dir=run_dir, report=report, failure=failure)


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
    write_params_copy(params, run_dir)
    with stop_on_signals(), lab(params, run_dir) as session, prompt_tokenizers(session.fleet) as tokenizers:
        run_search(params, run_dir, {server.name: Target.for_server(server) for server in session.fleet}, tokenizers)
    write_index(outputs)
    return run_dir



def write_params_copy(params: Params, run_dir: Path) -> None:
    """The run's `params.yaml`: what the params file set, from the params read once (no comments, no defaults)."""
    data = params.model_dump(mode="json", exclude_unset=True)
    (run_dir / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


NOISY_ON_INTERRUPT = ("papermill", "nbclient", "traitlets", "asyncio", "tornado", "jupyter_client")
"""Loggers that report Ctrl-C's teardown of a kernel client as errors (nbclient's DeadKernelError, "Kernel died")."""


@contextlib.contextmanager
def quiet_interrupt() -> Iterator[None]:
    """Ctrl-C while a notebook runs tears papermill's kernel client down mid-message, and papermill, nbclient,
    asyncio and ZMQ's sockets (at exit: "Socket operation on non-socket") each report that with a traceback,
    around servelab's one clear line. On SIGINT those reporters are silenced first, then KeyboardInterrupt is
    raised as usual, so the servers still stop and the records stay. With --debug (servelab's DEBUG level)
    nothing is silenced."""
    if logging.getLogger("servelab").isEnabledFor(logging.DEBUG) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum: int, frame: object) -> None:
        for name in NOISY_ON_INTERRUPT:
            logging.getLogger(name).disabled = True
        threading.excepthook = lambda args: None
        sys.unraisablehook = lambda unraisable: None
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def record_outcome(params: Params, run_dir: Path) -> str | None:
    """Judge the run as a whole and write the verdict into manifest.json (`outcome`): failed when its measured
    requests failed more often than policy.max_error_rate, else done. Returns why it failed, or None."""
    points = latest_points(run_dir)
    requests = sum(point.requests for point in points.values())
    errors = sum(point.errors for point in points.values())
    failed_points = sorted(point_id for point_id, point in points.items() if point.status in ("failed", "aborted"))
    limit = params.policy.max_error_rate
    failure = None
    if points and (requests == 0 or errors / requests > limit):
        rate = (
            f"{errors} of {requests} measured requests failed ({errors / requests:.0%}), above policy.max_error_rate {limit:g}"
            if requests
            else "no request was measured"
        )
        failure = f"{rate}; the failed points: {', '.join(failed_points) or 'none'}"
    outcome = {"status": "failed" if failure else "done", "reason": failure, "requests": requests, "errors": errors,
               "max_error_rate": limit, "failed_points": failed_points}
    update_manifest(run_dir, outcome=outcome)
    return failure
