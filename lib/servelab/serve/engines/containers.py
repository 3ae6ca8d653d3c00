"""The parts of a compose service that the GPU engines' adapters share (kept here, below servelab.serve.compose,
so that the adapters need not import the module that imports them)."""

from __future__ import annotations

import copy
import math
from typing import Any

from servelab.params import Deployment
from servelab.serve.models import shape_of

MODEL_CACHE_VOLUME = "model-cache"
SHAPES_DIR = "shapes"
"""Shape folders live in `<compose dir>/shapes/<shape>` and are mounted read-only at /shapes/<shape>."""
SHAPES_IN_CONTAINER = "/shapes"
GPU_RESERVATION = {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}


def gpu_service(deployment: Deployment, image: str, host_port: int, container_port: int) -> dict[str, Any]:
    """The parts every GPU server shares: image, loopback port, model cache (+ shape folder), GPU reservation."""
    volumes = [f"{MODEL_CACHE_VOLUME}:/root/.cache"]
    if deployment.shape is not None:
        name = shape_of(deployment).name
        volumes.append(f"./{SHAPES_DIR}/{name}:{SHAPES_IN_CONTAINER}/{name}:ro")
    return {
        "image": image,
        "ports": [f"127.0.0.1:{host_port}:{container_port}"],
        "volumes": volumes,
        "shm_size": "8gb",
        "deploy": {"resources": {"reservations": {"devices": [gpu_reservation(deployment)]}}},
    }


def gpu_reservation(deployment: Deployment) -> dict[str, Any]:
    """Every GPU, or the deployment's `gpus` as device_ids (compose allows count or device_ids, not both)."""
    if deployment.gpus is None:
        return copy.deepcopy(GPU_RESERVATION)
    return {"driver": "nvidia", "device_ids": [str(index) for index in deployment.gpus], "capabilities": ["gpu"]}


def container_model(deployment: Deployment) -> str:
    """What a containerised server loads: the mounted shape folder, or the model id as written."""
    if deployment.shape is not None:
        return f"{SHAPES_IN_CONTAINER}/{shape_of(deployment).name}"
    return deployment.model


def healthcheck(deployment: Deployment, test: list[str]) -> dict[str, Any]:
    """Probe every 5 s; failures during the deployment's startup_timeout_s do not count."""
    return {
        "test": test,
        "interval": "5s",
        "timeout": "3s",
        "retries": 3,
        "start_period": f"{math.ceil(deployment.startup_timeout_s)}s",
    }


def http_healthcheck(deployment: Deployment, container_port: int, path: str) -> dict[str, Any]:
    """A GET from inside the container with the image's own python3 (no curl needed)."""
    url = f"http://127.0.0.1:{container_port}{path}"
    probe = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=3)"
    return healthcheck(deployment, ["CMD", "python3", "-c", probe])
