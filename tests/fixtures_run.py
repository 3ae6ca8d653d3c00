"""A real batch run of all four notebooks on the embedded engine, shared by the notebook and browser tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "description": "The smallest real run: the embedded engine, two languages, two concurrency levels.",
    "deployments": [
        {
            "name": "smollm2",
            "model": "smollm2",
            "engine": {"kind": "llamacpp", "parallel_slots": 2, "ctx_size": 2048},
            "startup_timeout_s": 120,
        }
    ],
    "sweep": {
        "languages": ["en", "ko"],
        "input_tokens": 32,
        "output_tokens": 12,
        "load": [{"kind": "concurrency", "values": [1, 2]}],
        "requests_per_point": 4,
        "warmup_requests": 1,
        "request_timeout_s": 60,
    },
}


def write_params(folder: Path, name: str = "tiny", **sweep_overrides: object) -> Path:
    data = {**TINY, "name": name, "sweep": {**TINY["sweep"], **sweep_overrides}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


ONE_POINT_DEMO = {**TINY, "name": "demo", "sweep": {**TINY["sweep"], "languages": ["en"], "load": [{"kind": "concurrency", "values": [2]}]}}
"""The notebooks' default params file, params/demo.yaml, cut to one load point: the notebooks run with their
default parameters in minutes even on a busy 2-core machine (the full demo runs in `make demo` and the batch test)."""


def copy_notebooks_with_one_point_demo(folder: Path) -> Path:
    """notebooks/ and params/demo.yaml side by side in `folder`, so the defaults' relative paths hold; returns
    the notebooks' folder."""
    shutil.copytree(REPO / "notebooks", folder / "notebooks")
    (folder / "params").mkdir()
    (folder / "params" / "demo.yaml").write_text(yaml.safe_dump(ONE_POINT_DEMO, sort_keys=False))
    return folder / "notebooks"
