"""Fixtures shared by every test folder: the real embedded engine, started once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servelab.params import Params, parse_params
from servelab.serve.deploy import Fleet, RunningServer, deploy

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["cluster.loopback_ray"]  # the local Ray cluster fixture of tests/cluster


def embedded_params(name: str = "smollm2", parallel_slots: int = 4, **sweep: object) -> Params:
    """Params for one embedded llama-server; keyword arguments override the sweep section."""
    data = {
        "name": "test",
        "deployments": [
            {
                "name": name,
                "model": "smollm2",
                "engine": {"kind": "llamacpp", "parallel_slots": parallel_slots, "ctx_size": 4096},
                "startup_timeout_s": 120,
            }
        ],
        "sweep": {
            "languages": ["en"],
            "input_tokens": 32,
            "output_tokens": 16,
            "load": [{"kind": "concurrency", "values": [2]}],
            "requests_per_point": 4,
            "warmup_requests": 1,
            **sweep,
        },
    }
    return parse_params(data, "<test>")


@pytest.fixture(scope="session")
def embedded_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One real llama-server serving SmolLM2-135M on a free loopback port, for the whole test session."""
    run_dir = tmp_path_factory.mktemp("embedded-run")
    fleet = deploy(embedded_params(), run_dir)
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture(scope="session")
def embedded_server(embedded_fleet: Fleet) -> RunningServer:
    """The RunningServer of `embedded_fleet`: `.base_url`, `.served_model`, `.pid`, `.name` (the deployment)."""
    return embedded_fleet["smollm2"]


@pytest.fixture(scope="session")
def batch_run(tmp_path_factory: pytest.TempPathFactory):
    """`servelab run` over the four notebooks with tiny params: the run folder and its report."""
    from fixtures_run import write_params
    from servelab.run import run

    folder = tmp_path_factory.mktemp("batch")
    params_path = write_params(folder)
    return run(params_path, outputs_dir=folder / "outputs")
