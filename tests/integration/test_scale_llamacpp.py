"""Past one GPU and one core, on the real embedded engine: a deployment's `gpus` reach the server's environment, and a
sweep driven by two client processes writes one requests file with every request once."""

from __future__ import annotations

from pathlib import Path

from conftest import embedded_params
from servelab.measure.sweep import run_sweep
from servelab.params import parse_params
from servelab.records import latest_points, read_requests
from servelab.serve.deploy import Fleet, deploy


def environment_of(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode(errors="replace").split("=", 1) for entry in entries if b"=" in entry)


def test_a_deployment_that_names_its_gpus_starts_with_cuda_visible_devices(tmp_path: Path) -> None:
    data = embedded_params().model_dump(mode="json")
    data["deployments"][0]["gpus"] = [1, 0]
    with deploy(parse_params(data), tmp_path) as fleet:
        assert environment_of(fleet["smollm2"].pid)["CUDA_VISIBLE_DEVICES"] == "1,0"


def test_a_sweep_over_two_client_processes_writes_each_request_once(embedded_fleet: Fleet, tmp_path: Path) -> None:
    """Closed loop only: the open loop over processes is tested against the emitter (tests/unit/test_workers.py)."""
    params = embedded_params(requests_per_point=4, warmup_requests=2, client_processes=2)
    run_sweep(params, tmp_path, embedded_fleet, progress=False)
    points = latest_points(tmp_path)
    assert len(points) == 1 and {p.status for p in points.values()} == {"done"}
    records = read_requests(tmp_path)
    assert sorted(r.request_index for r in records) == list(range(6))
    assert [r.end_ns for r in records] == sorted(r.end_ns for r in records)
    assert all(r.ok and r.output_tokens == 16 for r in records), [(r.error_class, r.error_message) for r in records]
