"""The records of a run and the files that hold them.

Layout of `outputs/<run-id>/` (SCHEMA_VERSION 1):
- `manifest.json`   params, revision, versions, host, GPU or "none", clock anchor, calibration
- `requests.jsonl`  one `RequestRecord` per request, appended as each completes
- `points.jsonl`    one `PointRecord` per load point when it starts and when it ends
- `gpu.csv`         `MemorySample`s from NVML (a device row per GPU per tick, each with its device_index), or
                    `host_memory.csv` from the host fallback (labelled)
- `summary.csv`     tidy metrics per load point
- `logs/`           engine logs; `notebooks/` executed notebooks; `report.html`
All times are CLOCK_MONOTONIC nanoseconds (`servelab.clock.now_ns`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import operator
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servelab.errors import OutputsError

SCHEMA_VERSION = 1
REQUESTS_FILE = "requests.jsonl"
POINTS_FILE = "points.jsonl"
GPU_FILE = "gpu.csv"
HOST_MEMORY_FILE = "host_memory.csv"
SUMMARY_FILE = "summary.csv"
MANIFEST_FILE = "manifest.json"
LOADED_MODELS_FILE = "loaded_models.jsonl"


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it. A failed request is a record with `error_class` set, never an exception."""

    point_id: str
    request_index: int
    deployment: str
    framework: str
    model: str
    language: str
    warmup: bool
    intended_send_ns: int
    actual_send_ns: int = 0
    first_token_ns: int | None = None
    end_ns: int = 0
    chunk_ns: list[int] = field(default_factory=list)
    """Arrival time of every chunk that carried output text, in order."""
    chunk_count: int = 0
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    token_source: str = "none"
    """Where output_tokens came from: 'server' (usage / eval_count), 'tokenizer', or 'chunks'."""
    tokenizer_output_tokens: int | None = None
    http_status: int | None = None
    error_class: str | None = None
    """None on success; else one of ERROR_CLASSES."""
    error_message: str | None = None
    prompt_chars: int = 0
    output_chars: int = 0
    server_timings: dict[str, Any] | None = None
    retries: int = 0
    """Times the request was sent again because its connection closed before any response byte (a keep-alive race)."""
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.error_class is None


ERROR_CLASSES = (
    "timeout",
    "connect",
    "connection_reset",
    "http_429",
    "http_4xx",
    "http_5xx",
    "protocol",
    "cancelled",
    "empty",
    "other",
)


@dataclass(slots=True)
class PointRecord:
    """One load point: a deployment, a language and one load value. Written at start and at end."""

    point_id: str
    deployment: str
    framework: str
    model: str
    language: str
    load_kind: str
    load_value: float
    status: str
    """'started', 'done', 'failed' (too many errors) or 'aborted' (the engine died)."""
    start_ns: int
    end_ns: int | None = None
    requests: int = 0
    errors: int = 0
    schedule_lag_p99_ms: float | None = None
    schedule_kept: bool | None = None
    message: str | None = None
    interference: bool = False
    """True when every deployment was under load at once (the interference point)."""
    schema_version: int = SCHEMA_VERSION


@dataclass(slots=True)
class LoadedModelRecord:
    """One model a server held at the end of a load point, by the server's own report (Ollama's /api/ps)."""

    point_id: str
    deployment: str
    t_ns: int
    model: str
    size_mib: float
    vram_mib: float
    spilled: bool
    """Part of the model was in host memory (vram_mib < size_mib): the CPU computed that part."""
    served_for: str | None = None
    """The deployment of this run that sends requests to this model on this server; None: none of them."""
    schema_version: int = SCHEMA_VERSION


@dataclass(slots=True)
class MemorySample:
    """One memory reading: the device as a whole (`scope='device'`) or one process (`scope='process'`)."""

    t_ns: int
    source: str
    """'nvml' for GPU readings, 'host_rss' for the CPU fallback: never mistake one for the other."""
    scope: str
    device_index: int | None = None
    pid: int | None = None
    deployment: str | None = None
    used_mib: float | None = None
    total_mib: float | None = None
    utilization_pct: float | None = None
    power_w: float | None = None
    energy_mj: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    temperature_c: float | None = None


MEMORY_COLUMNS = [f.name for f in dataclasses.fields(MemorySample)]


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


class JsonlWriter:
    """Appends one JSON object per line; every line reaches the file whole or not at all, and lines are fsynced
    every `fsync_every` lines and on `sync()`.

    Each line is one unbuffered write, so a record is in the file (the kernel's page cache) the moment `write`
    returns and survives the process being killed. A write that fails part-way (disk full) is cut back to the
    last whole line before OutputsError is raised, and a torn last line left by a crash is cut off on open, so
    appends never glue onto half a line.
    """

    def __init__(self, path: Path, fsync_every: int = 64) -> None:
        self.path = path
        self.fsync_every = fsync_every
        self._pending = 0
        try:
            self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
            _cut_torn_tail(self._file)
        except OSError as error:
            raise OutputsError(f"cannot open {path} for appending: {error.strerror}; check the disk and permissions") from None

    def write(self, record: Any) -> None:
        line = json.dumps(to_dict(record) if dataclasses.is_dataclass(record) else record, ensure_ascii=False)
        data = (line + "\n").encode("utf-8")
        try:
            written = 0
            while written < len(data):
                written += self._file.write(data[written:]) or 0
        except OSError as error:
            self._cut_back()
            raise OutputsError(
                f"cannot write {self.path}: {error.strerror}; free space or fix permissions, then --resume"
            ) from None
        self._pending += 1
        if self._pending >= self.fsync_every:
            self.sync()

    def _cut_back(self) -> None:
        """Drop the part of a line a failed write left behind (a device that cannot truncate keeps it)."""
        try:
            _cut_torn_tail(self._file)
        except OSError:
            pass

    def sync(self) -> None:
        if self._pending:
            try:
                os.fsync(self._file.fileno())
            except OSError as error:
                raise OutputsError(f"cannot sync {self.path} to disk: {error.strerror}; check the disk") from None
            self._pending = 0

    def close(self) -> None:
        if not self._file.closed:
            try:
                self.sync()
            finally:
                self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_torn_tail(handle: Any, block: int = 65_536) -> int:
    """Truncate an append-mode file after its last newline (a crash mid-line leaves a torn tail); its new size."""
    size = os.fstat(handle.fileno()).st_size
    end = size
    with open(handle.name, "rb") as reader:
        while end > 0:
            start = max(0, end - block)
            reader.seek(start)
            newline = reader.read(end - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
    if end != size:
        os.ftruncate(handle.fileno(), end)
    return end


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the objects of a JSONL file; a torn last line (a crash mid-write) is skipped, not an error."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def read_requests(run_dir: Path) -> list[RequestRecord]:
    names = {f.name for f in dataclasses.fields(RequestRecord)}
    return [RequestRecord(**{k: v for k, v in row.items() if k in names}) for row in read_jsonl(run_dir / REQUESTS_FILE)]


def latest_points(run_dir: Path) -> dict[str, PointRecord]:
    """The last state of every point, keyed by point_id."""
    names = {f.name for f in dataclasses.fields(PointRecord)}
    points: dict[str, PointRecord] = {}
    for row in read_jsonl(run_dir / POINTS_FILE):
        points[row["point_id"]] = PointRecord(**{k: v for k, v in row.items() if k in names})
    return points


def rewrite_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace a JSONL file atomically (write beside it, fsync, rename)."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputsError(f"cannot rewrite {path}: {error.strerror}; free space or fix permissions, then --resume") from None


class MemoryCsvWriter:
    """Appends MemorySamples as CSV rows, flushing each batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        try:
            self._file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as error:
            raise OutputsError(f"cannot open {path}: {error.strerror}") from None
        self._writer = csv.writer(self._file)
        self._row = operator.attrgetter(*MEMORY_COLUMNS)
        if new:
            self._writer.writerow(MEMORY_COLUMNS)

    def write_many(self, samples: Iterable[MemorySample]) -> None:
        try:
            # attrgetter, not dataclasses.asdict: at 100 Hz the deep copy was most of the sampler's CPU.
            self._writer.writerows(map(self._row, samples))
            self._file.flush()
        except OSError as error:
            raise OutputsError(f"cannot write {self.path}: {error.strerror}") from None

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
