"""`manifest.json`: enough to rerun a run and to judge its numbers, with every secret redacted."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from servelab.clock import wall_anchor
from servelab.errors import OutputsError
from servelab.params import Params
from servelab.records import MANIFEST_FILE, SCHEMA_VERSION
from servelab.secrets import redact

PACKAGES = (
    "servelab", "httpx", "pandas", "numpy", "pydantic", "papermill", "nbconvert", "nbclient", "jupyterlab",
    "ipykernel", "matplotlib", "seaborn", "nvidia-ml-py", "psutil", "tqdm", "uvloop",
)
"""servelab's own packages; each engine adapter names its engine's (`EngineAdapter.packages`)."""


def package_versions(engine_packages: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of servelab's packages and of `engine_packages` (what the adapters name), by name."""
    versions = {}
    for name in dict.fromkeys(PACKAGES + engine_packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_revision(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            completed = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return completed.stdout.strip() if completed.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha or "unknown", "dirty": bool(status) if status is not None else None}


def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }


def build_manifest(params: Params, params_path: str, run_id: str, repo: Path, gpu: dict[str, Any] | str,
                   engine_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """The manifest of a new run; `gpu` is what `servelab.observe.gpu_inventory` read and `engine_packages` what the
    engines' adapters name (the manifest reads no GPU and knows no engine)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "params_file": params_path,
        "params": params.model_dump(mode="json"),
        "git": git_revision(repo),
        "packages": package_versions(engine_packages),
        "host": host_info(),
        "gpu": gpu,
        "clock": {"name": "CLOCK_MONOTONIC", "unit": "ns", "anchor": wall_anchor()},
        "engines": {},
        "calibration": None,
    }


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write atomically, with every secret value of the environment redacted."""
    text = redact(json.dumps(manifest, indent=2, ensure_ascii=False, default=str))
    temporary = run_dir / (MANIFEST_FILE + ".tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, run_dir / MANIFEST_FILE)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputsError(
            f"cannot write {run_dir / MANIFEST_FILE}: {error.strerror}; free space or fix permissions, then --resume"
        ) from None


def read_manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / MANIFEST_FILE).read_text(encoding="utf-8"))


def read_params(run_dir: Path) -> Params:
    """The run's params as they were resolved and validated when the run began (the manifest's copy, redacted).

    Every notebook kernel, the report and `servelab report` read these, never the YAML file again: the file may
    have changed since, or may be on another machine."""
    return Params.model_validate(read_manifest(run_dir)["params"])


def update_manifest(run_dir: Path, **sections: Any) -> dict[str, Any]:
    manifest = read_manifest(run_dir)
    manifest.update(sections)
    write_manifest(run_dir, manifest)
    return manifest
