"""What the reliability tests share: the reference emitter and the fault proxy as real processes, a fleet that
points a real sweep at them, real disk faults, and the check that no request was lost.

Imported by name (`from fault_harness import ...`): pytest puts this folder on sys.path, and a second
conftest.py would shadow the top-level one that other folders import as `conftest`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from servelab.clock import now_ns
from servelab.params import Params, parse_params
from servelab.records import POINTS_FILE, REQUESTS_FILE, latest_points, read_jsonl
from servelab.serve.deploy import Fleet, RunningServer, stop_child

REPO = Path(__file__).resolve().parents[2]
EMITTER = REPO / "tools" / "emitter" / "emitter.py"
PYTHON = sys.executable


# ------------------------------------------------------------------------------------------- processes
@contextlib.contextmanager
def served(argv: list[str], what: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start a server process whose first stdout line is 'listening on URL'; yield (URL, process); stop it."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = process.stdout.readline().strip()  # type: ignore[union-attr]
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, f"{what} printed {line!r} first; stderr: {process.stderr.read() if process.poll() is not None else ''}"  # type: ignore[union-attr]
        yield match.group(1), process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a test may have stopped it with SIGSTOP
        stop_child(process)


def emitter(*flags: str) -> contextlib.AbstractContextManager[tuple[str, subprocess.Popen[str]]]:
    """The reference emitter (tools/emitter) with fast tokens by default and the given (fault) flags."""
    return served([PYTHON, str(EMITTER), "--port", "0", "--ttft-ms", "1", "--itl-ms", "1", *flags], "the emitter")


def faultproxy(upstream: str, fault: str, every: int = 1, flavour: str = "openai") -> contextlib.AbstractContextManager[tuple[str, subprocess.Popen[str]]]:
    """tools/faultproxy in front of `upstream`, faulting every `every`-th request with `fault`."""
    argv = [PYTHON, str(REPO / "tools" / "faultproxy" / "faultproxy.py"), "--upstream", upstream, "--fault", fault, "--every", str(every), "--flavour", flavour]
    return served(argv, "the fault proxy")


def fleet_at(run_dir: Path, url: str, pid: int, name: str = "fake", flavour: str = "openai") -> Fleet:
    """A fleet whose one server is a process we started ourselves (emitter or proxy); closing it stops nothing."""
    server = RunningServer(
        name=name,
        framework="ollama" if flavour == "ollama" else "vllm",
        model="fault-injection",
        served_model="fault-injection",
        api_flavour=flavour,
        base_url=url,
        port=int(url.rsplit(":", 1)[1]),
        pid=pid,
        log_path=str(run_dir / "logs" / f"{name}.log"),
        argv=[],
        launched_ns=now_ns(),
        ready_ns=now_ns(),
    )
    return Fleet(run_dir=run_dir, servers={name: server}, owned=False)


def sweep_params(name: str = "fake", policy: dict[str, Any] | None = None, **sweep: Any) -> Params:
    """Params for one deployment served by a process the test starts; keyword arguments override the sweep."""
    data = {
        "name": "reliability",
        "deployments": [{"name": name, "model": "fault-injection", "engine": {"kind": "vllm"}}],
        "sweep": {
            "languages": ["en"],
            "input_tokens": 16,
            "output_tokens": 4,
            "load": [{"kind": "concurrency", "values": [2]}],
            "requests_per_point": 6,
            "warmup_requests": 1,
            "request_timeout_s": 10,
            **sweep,
        },
        "policy": policy or {},
    }
    return parse_params(data, "<reliability>")


def write_yaml(path: Path, params: Params) -> Path:
    path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return path


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Poll until `condition()`; the bound only stops a hang, it is not a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def lines(path: Path) -> int:
    return sum(1 for _ in read_jsonl(path)) if path.exists() else 0


# ------------------------------------------------------------------------------------------- nothing lost
def check_nothing_lost(run_dir: Path, warmup_requests: int) -> int:
    """Assert that the run folder is whole and that every request each point sent is on disk exactly once.

    Whole: every line of requests.jsonl and points.jsonl is JSON and each file ends with a newline. Exactly
    once: per point, the measured records on disk are the `requests` its end mark counts (for a point that
    ended) with indices 0..n-1 and no repeat, after the expected warm-ups. Returns the records checked.
    """
    for name in (REQUESTS_FILE, POINTS_FILE):
        path = run_dir / name
        if path.exists() and path.stat().st_size:
            raw = path.read_bytes()
            assert raw.endswith(b"\n"), f"{name} ends in a torn line"
            for number, line in enumerate(raw.splitlines(), 1):
                try:
                    json.loads(line)
                except ValueError:
                    raise AssertionError(f"{name} line {number} is not JSON: {line[:120]!r}") from None
    records = list(read_jsonl(run_dir / REQUESTS_FILE))
    keys = collections.Counter((r["point_id"], r["request_index"]) for r in records)
    repeated = [key for key, count in keys.items() if count > 1]
    assert not repeated, f"requests recorded twice: {repeated[:5]}"
    by_point: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for record in records:
        by_point[record["point_id"]].append(record)
    for point_id, point in latest_points(run_dir).items():
        if point.status == "started":
            continue
        mine = by_point.get(point_id, [])
        measured = [r for r in mine if not r["warmup"]]
        warmups = [r for r in mine if r["warmup"]]
        assert len(measured) == point.requests, f"{point_id}: {point.requests} requests sent, {len(measured)} on disk"
        assert len(warmups) == warmup_requests, f"{point_id}: {len(warmups)} warm-up records, expected {warmup_requests}"
        assert sorted(r["request_index"] for r in mine) == list(range(len(mine))), f"{point_id}: request indices have gaps"
        errors = sum(r["error_class"] is not None for r in measured)
        assert errors == point.errors, f"{point_id}: {point.errors} errors counted, {errors} on disk"
    return len(records)


# ------------------------------------------------------------------------------------------- disks
def _mount(*args: str) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0  # noqa: S603, S607


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)  # noqa: S603, S607


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "64k") -> Iterator[bool]:
    """A tmpfs of `size` at `path` (needs root); yields True when mounted, False when the caller must fall back."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield mounted
    finally:
        if mounted:
            _umount(path)


def grow_disk(path: Path, size: str) -> None:
    """Give the tmpfs at `path` more room, as freeing space would."""
    assert _mount("-o", f"remount,size={size}", str(path)), f"cannot remount {path}"


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[str]:
    """Make `path` read-only and yield how. Root ignores file modes, so as root: a read-only bind mount of the
    folder over itself, else the immutable attribute (`chattr +i`); otherwise chmod 0555."""
    path.mkdir(parents=True, exist_ok=True)
    if _mount("--bind", str(path), str(path)):
        if _mount("-o", "remount,bind,ro", str(path)):
            try:
                yield "read-only bind mount"
            finally:
                _umount(path)
            return
        _umount(path)
    if os.geteuid() == 0 and _chattr("+i", path):
        try:
            yield "chattr +i"
        finally:
            _chattr("-i", path)
        return
    path.chmod(0o555)
    try:
        yield "chmod 0555"
    finally:
        path.chmod(0o755)


def _chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False).returncode == 0  # noqa: S603, S607


def writable(path: Path) -> bool:
    """Whether a file can be created in `path` right now (the probe that a read-only setup really holds)."""
    probe = path / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True
