"""`servelab run --cluster` on a real local Ray cluster (a head and a worker node on loopback, `fake_gpu`
standing in for GPUs), with the real embedded engine on each node. No mocks."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import yaml
from servelab.records import read_jsonl

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "params" / "demo-cluster.yaml"
RUN_TIMEOUT_S = 900


def _only_run(outputs: Path) -> Path:
    runs = [p for p in outputs.iterdir() if (p / "manifest.json").exists()]
    assert len(runs) == 1, runs
    return runs[0]


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _latest_points(run_dir: Path) -> dict[str, dict]:
    return {row["point_id"]: row for row in read_jsonl(run_dir / "points.jsonl")}


def _run_servelab(cluster, *args: str) -> tuple[int, str, str]:
    process = cluster.servelab("run", *args, "--cluster", cluster.address, "--gpu-resource", "fake_gpu", cwd=REPO)
    stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    return process.returncode, stdout, stderr


def test_demo_in_two_groups_runs_one_group_per_node_of_a_loopback_ray_cluster_with_fake_gpus_into_one_report(
    loopback_ray_cluster, tmp_path
):
    outputs = tmp_path / "outputs"
    refused = loopback_ray_cluster.servelab(
        "run", str(DEMO), "--outputs", str(tmp_path / "refused"), "--cluster", loopback_ray_cluster.address,
        "--gpu-resource", "GPU", cwd=REPO,
    )
    _, stderr = refused.communicate(timeout=RUN_TIMEOUT_S)
    assert refused.returncode == 2
    assert "has 0 GPU in all, but group a needs 1" in stderr and "--gpu-resource" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "refused").exists(), "refused before any run folder was made"

    code, stdout, stderr = _run_servelab(loopback_ray_cluster, str(DEMO), "--outputs", str(outputs))
    assert code == 0, stderr[-4000:]
    run_dir = _only_run(outputs)
    groups = _manifest(run_dir)["cluster"]["groups"]
    assert sorted(groups) == ["a", "b"]
    assert all(group["status"] == "done" for group in groups.values())
    assert groups["a"]["node_id"] != groups["b"]["node_id"], "each node has one fake_gpu: the groups must be on both"
    # Both nodes run on this one host, so both monotonic clocks are the same clock: the join through the wall
    # anchors must come out near zero (it measures the anchors' own error; see docs/scale.md).
    for group in groups.values():
        print(f"clock offset of the node of {group['deployments']}: {group['clock_offset_ns']} ns")
        assert abs(group["clock_offset_ns"]) < 1_000_000_000

    points = _latest_points(run_dir)
    assert len(points) == 4
    for point in points.values():
        group = "a" if point["deployment"] == "smollm2-a" else "b"
        assert point["status"] == "done", point
        assert (point["group"], point["node_id"]) == (group, groups[group]["node_id"])
    per_point = collections.Counter(row["point_id"] for row in read_jsonl(run_dir / "requests.jsonl"))
    assert sorted(per_point) == sorted(points)
    assert set(per_point.values()) == {4 + 1}, "requests_per_point plus one warm-up, each exactly once"
    for name in ("a", "b"):
        assert (run_dir / "groups" / name / "manifest.json").exists()
        assert (run_dir / "logs" / f"smollm2-{name}.log").exists()
    engines = _manifest(run_dir)["engines"]
    assert {name: engine["node_id"] for name, engine in engines.items()} == {
        "smollm2-a": groups["a"]["node_id"], "smollm2-b": groups["b"]["node_id"]
    }
    assert (run_dir / "host_memory.csv").exists()

    report = (run_dir / "report.html").read_text()
    for name in ("a", "b"):
        assert f"group {name}" in report
        assert groups[name]["node_id"][:12] in report
    assert "smollm2-a" in report and "smollm2-b" in report


def _wait_for_worker_group(worker_tmp: Path, timeout_s: float = 600.0) -> str:
    """The group whose sweep has started on the worker node (its scratch folder is under the worker's TMPDIR)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in worker_tmp.glob("servelab-cluster/*/*/points.jsonl"):
            if path.stat().st_size > 0:
                return path.parent.name
        time.sleep(0.1)
    raise AssertionError("no group's sweep started on the worker node")


def test_worker_node_killed_mid_run_on_a_loopback_ray_cluster_marks_its_points_failed_and_resume_reruns_only_them(
    loopback_ray_cluster, tmp_path
):
    cluster = loopback_ray_cluster
    data = yaml.safe_load(DEMO.read_text())
    data["sweep"]["requests_per_point"] = 12  # long enough for the kill to land mid-sweep
    params = tmp_path / "demo-cluster.yaml"
    params.write_text(yaml.safe_dump(data))
    outputs = tmp_path / "outputs"
    process = cluster.servelab(
        "run", str(params), "--outputs", str(outputs), "--cluster", cluster.address, "--gpu-resource", "fake_gpu", cwd=REPO
    )
    lost = _wait_for_worker_group(cluster.worker_tmp)
    cluster.kill_worker_node()
    _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 2, stderr[-4000:]
    assert "--resume" in stderr and f"group(s) {lost} did not finish" in stderr
    assert "Traceback" not in stderr

    run_dir = _only_run(outputs)
    kept = "a" if lost == "b" else "b"
    groups = _manifest(run_dir)["cluster"]["groups"]
    assert groups[lost]["status"] == "failed" and groups[kept]["status"] == "done"
    dead_node = groups[lost]["node_id"]
    assert dead_node in groups[lost]["message"][:200] or dead_node[:12] in groups[lost]["message"]
    points = _latest_points(run_dir)
    assert len(points) == 4
    for point in points.values():
        expected = "failed" if point["group"] == lost else "done"
        assert point["status"] == expected, point
    assert {row["deployment"] for row in read_jsonl(run_dir / "requests.jsonl")} == {f"smollm2-{kept}"}
    assert "failed" in (run_dir / "report.html").read_text()
    kept_records = (run_dir / "groups" / kept / "requests.jsonl").read_bytes()

    code, _, stderr = _run_servelab(cluster, str(params), "--outputs", str(outputs), "--resume", run_dir.name)
    assert code == 0, stderr[-4000:]
    groups = _manifest(run_dir)["cluster"]["groups"]
    assert groups[lost]["status"] == "done" and groups[lost]["node_id"] != dead_node
    assert (run_dir / "groups" / kept / "requests.jsonl").read_bytes() == kept_records, "the finished group was not rerun"
    points = _latest_points(run_dir)
    assert all(point["status"] == "done" for point in points.values()), points
    per_point = collections.Counter(row["point_id"] for row in read_jsonl(run_dir / "requests.jsonl"))
    assert sorted(per_point) == sorted(points)
    assert set(per_point.values()) == {12 + 1}
