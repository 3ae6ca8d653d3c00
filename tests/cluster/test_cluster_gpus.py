"""`servelab run --cluster` on a Ray node that declares two GPUs it does not have (`ray start --num-gpus 2`): the
GPU ids Ray hands each group must be the ones its servers are started on, whatever `gpus` the params name. The
embedded llama.cpp engine ignores CUDA_VISIBLE_DEVICES, so the stand-in GPUs are enough. No mocks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "params" / "demo-cluster.yaml"
RUN_TIMEOUT_S = 900
MARK = "SERVELAB_TEST_GROUP"


def _two_groups_both_naming_gpu_0(path: Path) -> Path:
    """demo-cluster, trimmed to one short load point, with both groups' servers naming `gpus: [0]` and marked."""
    data = yaml.safe_load(DEMO.read_text())
    for deployment in data["deployments"]:
        deployment["gpus"] = [0]
        deployment["env"] = {MARK: deployment["group"]}
    data["sweep"]["load"] = [{"kind": "concurrency", "values": [1]}]
    data["sweep"]["requests_per_point"] = 2
    path.write_text(yaml.safe_dump(data))
    return path


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(entry.split("=", 1) for entry in raw.decode(errors="replace").split("\0") if "=" in entry)


def _servers_cuda_devices(cluster, process) -> dict[str, set[str]]:
    """Group -> the CUDA_VISIBLE_DEVICES its launched servers had, read from /proc while `process` runs."""
    seen: dict[str, set[str]] = {}
    while process.poll() is None:
        for pid in cluster.pids():
            environ = _environ(pid)
            if MARK in environ:
                seen.setdefault(environ[MARK], set()).add(environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
        time.sleep(0.1)
    return seen


def test_two_groups_naming_gpu_0_run_on_the_different_declared_stand_in_gpus_ray_gave_each(
    loopback_ray_node_with_declared_gpus, tmp_path
):
    cluster = loopback_ray_node_with_declared_gpus
    params = _two_groups_both_naming_gpu_0(tmp_path / "two-groups-gpu0.yaml")
    outputs = tmp_path / "outputs"
    process = cluster.servelab("run", str(params), "--outputs", str(outputs), "--cluster", cluster.address, cwd=REPO)
    seen = _servers_cuda_devices(cluster, process)
    _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, stderr[-4000:]

    (run_dir,) = [p for p in outputs.iterdir() if (p / "manifest.json").exists()]
    groups = json.loads((run_dir / "manifest.json").read_text())["cluster"]["groups"]
    ray_ids = {name: group["ray_gpu_ids"] for name, group in groups.items()}
    assert sorted(sum(ray_ids.values(), [])) == ["0", "1"], f"Ray gave each group one of its two GPUs: {ray_ids}"
    assert seen == {name: {",".join(ids)} for name, ids in ray_ids.items()}, (
        f"each group's servers must run on the GPU Ray gave the group ({ray_ids}), not on the GPU 0 its params "
        f"name; their CUDA_VISIBLE_DEVICES were {seen}"
    )
    for name, group in groups.items():
        assert group["gpu_map"] == {"0": int(group["ray_gpu_ids"][0])}
        placed = json.loads((run_dir / "groups" / name / "manifest.json").read_text())["params"]
        assert [d["gpus"] for d in placed["deployments"]] == [[int(group["ray_gpu_ids"][0])]]
    report = (run_dir / "report.html").read_text()
    on_gpu_1 = next(name for name, ids in ray_ids.items() if ids == ["1"])
    assert f"smollm2-{on_gpu_1} on node" in report and "GPU 1 (params: 0);" in report
