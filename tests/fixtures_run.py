"""A real batch run of all four notebooks on the embedded engine, shared by the notebook and browser tests."""

from __future__ import annotations

from pathlib import Path

import yaml

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
