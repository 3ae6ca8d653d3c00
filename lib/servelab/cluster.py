"""`servelab run --cluster`: each co-location group as a Ray task on a node that has the GPUs it needs.

A group is the servers that share a GPU, their memory sampler and their client. Its task runs the ordinary
sweep (`session.lab` + `measure.sweep.run_sweep`) into a folder on its node and sends that folder back whole.
The head keeps each group's folder as it came, under `groups/<group>/` on its node's own clock, and joins
them into the run folder: every time shifted onto the head's clock through each node's wall anchor, points
tagged with their group and node. A group whose node dies has its points marked failed; `--resume` runs only
the groups that did not come back done, each from its start.
"""

from __future__ import annotations

import io
import logging
import shutil
import socket
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from servelab.analyse.summary import slo_of, write_summary
from servelab.clock import now_ns, wall_anchor
from servelab.errors import ServelabError
from servelab.manifest import read_manifest, update_manifest
from servelab.measure.sweep import FINISHED, plan_points
from servelab.params import Deployment, Params, load_params, parse_params
from servelab.records import (
    GPU_FILE,
    HOST_MEMORY_FILE,
    MANIFEST_FILE,
    POINTS_FILE,
    REQUESTS_FILE,
    PointRecord,
    latest_points,
    read_jsonl,
    rewrite_jsonl,
    to_dict,
)
from servelab.run import RunResult, reanalyse
from servelab.serve.planner import gpus_of
from servelab.session import create_run, lab

log = logging.getLogger(__name__)

DEFAULT_GROUP = "all"
GROUPS_DIR = "groups"
SCRATCH_DIR = "servelab-cluster"
REQUEST_TIMES = ("intended_send_ns", "actual_send_ns", "first_token_ns", "end_ns")


class ClusterError(ServelabError):
    """The Ray cluster cannot be reached, cannot hold a group, or a group did not come back."""


@dataclass(frozen=True)
class Group:
    """Deployments that share GPUs and so run together on one node, and the GPUs they need there."""

    name: str
    deployments: tuple[str, ...]
    gpus: int = 1


def _gpus_of(deployment: Any) -> frozenset[int]:
    """The GPUs a deployment names; none when it leaves `gpus` out."""
    return frozenset(deployment.gpus or ())


def _gpus_needed(group: list[Any]) -> int:
    """What a group asks of Ray: the GPUs its deployments name together, or its largest parallel size."""
    named = len(set().union(*(_gpus_of(d) for d in group)))
    return max(1, named, *(len(gpus_of(d)) for d in group))


def _overlapping_gpus(deployments: Iterable[Any]) -> dict[str, str]:
    """Deployment name -> `gpu<i>-<j>` for deployments that name GPUs, joined where their GPUs overlap."""
    joined: list[tuple[set[int], list[str]]] = []
    for deployment in deployments:
        gpus, members = set(_gpus_of(deployment)), [deployment.name]
        if not gpus:
            continue
        for entry in [entry for entry in joined if entry[0] & gpus]:
            joined.remove(entry)
            gpus, members = gpus | entry[0], entry[1] + members
        joined.append((gpus, members))
    return {name: "gpu" + "-".join(map(str, sorted(gpus))) for gpus, members in joined for name in members}


def form_groups(params: Params) -> list[Group]:
    """The co-location groups: by each deployment's `group`; else deployments whose `gpus` overlap share one;
    else everything is one group (a host without GPUs). Groups keep the params' order."""
    by_gpus = _overlapping_gpus(d for d in params.deployments if not d.group)
    members: dict[str, list[Any]] = {}
    for deployment in params.deployments:
        key = deployment.group or by_gpus.get(deployment.name, DEFAULT_GROUP)
        members.setdefault(key, []).append(deployment)
    return [
        Group(
            name=name,
            deployments=tuple(d.name for d in group),
            gpus=_gpus_needed(group),
        )
        for name, group in members.items()
    ]


def group_params(params: Params, group: Group) -> Params:
    """The params of one group: its deployments only, everything else as given."""
    data = params.model_dump(mode="json")
    data["deployments"] = [d for d in data["deployments"] if d["name"] in group.deployments]
    return parse_params(data, f"group {group.name}")


def describe_groups(params: Params, resource: str = "GPU") -> str:
    """The lines `--dry-run --cluster` prints: each group, what it asks of Ray, and its points."""
    lines = []
    for group in form_groups(params):
        points = plan_points(group_params(params, group))
        lines.append(
            f"group {group.name}: {', '.join(group.deployments)}; asks for {group.gpus} {resource}; {len(points)} load point(s)"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- clocks
def wall_ns(anchor: dict[str, Any]) -> int:
    """The anchor's UTC time in ns since the epoch (microsecond resolution, as the anchor is written)."""
    moment = datetime.fromisoformat(str(anchor["utc"]))
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def clock_offset_ns(node_anchor: dict[str, Any], head_anchor: dict[str, Any]) -> int:
    """What to add to a node's monotonic ns to put it on the head's: both anchors pin monotonic to wall time,
    so the error is the two hosts' wall-clock disagreement plus each anchor's own read gap."""
    node_base = wall_ns(node_anchor) - int(node_anchor["monotonic_ns"])
    head_base = wall_ns(head_anchor) - int(head_anchor["monotonic_ns"])
    return node_base - head_base


# ----------------------------------------------------------------------------------------------- GPUs Ray gave
def gpu_map(group: str, deployments: Sequence[Deployment], ray_gpu_ids: Sequence[str]) -> dict[int, int]:
    """The GPUs a group's deployments name, sorted, -> the physical ids Ray gave its actor, in Ray's order.

    Ray sets the actor's CUDA_VISIBLE_DEVICES to its ids, but a deployment that names `gpus` sets
    CUDA_VISIBLE_DEVICES from its own numbers, so `gpus: [0]` would run on GPU 0 whichever GPU Ray gave. Empty
    when Ray gave no GPUs (a stand-in resource). Raises ClusterError when Ray gave fewer than the group names,
    or an id that is not an index."""
    if not ray_gpu_ids:
        return {}
    try:
        assigned = [int(gpu) for gpu in ray_gpu_ids]
    except ValueError:
        raise ClusterError(
            f"group {group}: Ray gave GPU ids {list(ray_gpu_ids)}, not indices; start the node without "
            f"CUDA_VISIBLE_DEVICES set to UUIDs, or with --num-gpus and no CUDA_VISIBLE_DEVICES"
        ) from None
    named = sorted(set().union(*(_gpus_of(d) for d in deployments)))
    if len(named) > len(assigned):
        raise ClusterError(
            f"group {group}: its deployments name GPUs {named} but Ray gave it {len(assigned)} ({assigned}); "
            f"the group asks Ray for one GPU per GPU it names, so check the node's --num-gpus and that no other "
            f"actor holds its GPUs"
        )
    return dict(zip(named, assigned, strict=False))


def placed_params(params: Params, group: str, ray_gpu_ids: Sequence[str]) -> tuple[Params, dict[int, int]]:
    """`params` with each deployment's `gpus` put onto the physical GPUs Ray gave the group (all of them for a
    deployment that names none), and memory.device_index on the first; and the mapping. Unchanged without
    Ray GPUs."""
    mapping = gpu_map(group, params.deployments, ray_gpu_ids)
    if not ray_gpu_ids:
        return params, mapping
    assigned = [int(gpu) for gpu in ray_gpu_ids]
    data = params.model_dump(mode="json")
    for deployment in data["deployments"]:
        if "CUDA_VISIBLE_DEVICES" in deployment["env"]:
            raise ClusterError(
                f"group {group}: deployment {deployment['name']} sets env.CUDA_VISIBLE_DEVICES, which would override "
                f"the GPUs Ray gave the group ({assigned}); remove it and name the GPUs with gpus"
            )
        named = deployment["gpus"]
        deployment["gpus"] = [mapping[index] for index in named] if named else assigned
    data["memory"]["device_index"] = assigned[0]
    return parse_params(data, f"group {group} placed on GPUs {assigned}"), mapping


# ----------------------------------------------------------------------------------------------- on the node
@dataclass
class GroupOutcome:
    """What a group's task sends back: where it ran, how it ended, and its run folder as a tar.gz."""

    group: str
    node_id: str
    node_ip: str
    hostname: str
    anchor: dict[str, Any]
    status: str
    """'done', or 'failed' with `message` (the sweep raised; what it finished is in the archive)."""
    message: str | None = None
    archive: bytes = b""
    ray_gpu_ids: list[str] = field(default_factory=list)
    gpu_map: dict[str, int] = field(default_factory=dict)
    """The group's GPUs as its params name them (str keys, as JSON keeps them) -> the physical ids Ray gave it."""


def _pack(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname=".")
    return buffer.getvalue()


def _unpack(data: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(folder, filter="data")


def where_am_i() -> dict[str, Any]:
    """This node as Ray and the host name it: node id, address, host name, the GPUs Ray gave this process."""
    import ray

    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "ray_gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
    }


class GroupRunner:
    """A group's Ray actor: it holds the group's GPUs from placement to the end of its sweep, so the head learns
    the node before the sweep starts and can name it if the node dies."""

    def where(self) -> dict[str, Any]:
        return where_am_i()

    def run(self, params_data: dict[str, Any], params_file: str, run_id: str, group: str) -> GroupOutcome:
        return run_group(params_data, params_file, run_id, group)


def run_group(params_data: dict[str, Any], params_file: str, run_id: str, group: str) -> GroupOutcome:
    """Deploy the group's servers on this node, sweep them, and return the folder, finished or not."""
    from servelab.measure.sweep import run_sweep

    node = where_am_i()
    folder = Path(tempfile.gettempdir()) / SCRATCH_DIR / run_id / group
    shutil.rmtree(folder, ignore_errors=True)
    outcome = GroupOutcome(group=group, anchor={}, status="done", **node)
    try:
        params, mapping = placed_params(parse_params(params_data, params_file), group, node["ray_gpu_ids"])
        outcome.gpu_map = {str(named): physical for named, physical in mapping.items()}
        if mapping:
            log.info("group %s: its GPUs %s run on Ray's %s", group, sorted(mapping), list(mapping.values()))
        create_run(params, params_file, folder)
        outcome.anchor = read_manifest(folder)["clock"]["anchor"]
        with lab(params, folder) as current:
            run_sweep(params, folder, current.fleet, progress=False)
    except ServelabError as error:
        outcome.status, outcome.message = "failed", str(error)
    outcome.archive = _pack(folder) if folder.is_dir() else b""
    shutil.rmtree(folder, ignore_errors=True)
    return outcome


# ----------------------------------------------------------------------------------------------- on the head
def _shift(value: Any, offset: int) -> Any:
    return value + offset if isinstance(value, int) and value > 0 else value


def _joined_requests(folder: Path, offset: int) -> Iterable[dict[str, Any]]:
    for row in read_jsonl(folder / REQUESTS_FILE):
        for key in REQUEST_TIMES:
            row[key] = _shift(row.get(key), offset)
        row["chunk_ns"] = [chunk + offset for chunk in row.get("chunk_ns") or []]
        yield row


def _failed_point_rows(params: Params, group: Group, folder: Path, start_ns: int, message: str) -> list[dict[str, Any]]:
    """A failed point for every point of the group its folder does not show finished."""
    finished = {pid for pid, point in latest_points(folder).items() if point.status in FINISHED}
    by_name = {d.name: d for d in params.deployments}
    rows = []
    for point in plan_points(group_params(params, group)):
        for name in point.deployments:
            if point.point_id(name) in finished:
                continue
            record = PointRecord(
                point_id=point.point_id(name),
                deployment=name,
                framework=by_name[name].engine.kind,
                model=by_name[name].model,
                language=point.language,
                load_kind=point.load_kind,
                load_value=point.load_value,
                status="failed",
                start_ns=start_ns,
                message=message,
                interference=point.interference,
            )
            rows.append(to_dict(record))
    return rows


def _own_devices(samples: pd.DataFrame, ray_gpu_ids: Sequence[str]) -> pd.DataFrame:
    """A group's samples of the GPUs Ray gave it, and of the host; all of them without Ray GPUs. Each group's
    sampler reads every GPU of its node, where another group's servers are strangers to it: the joined run keeps
    each GPU's rows from the group that holds it, so memory per device is attributed once."""
    if not ray_gpu_ids or "device_index" not in samples:
        return samples
    own = {int(gpu) for gpu in ray_gpu_ids}
    return samples[samples["device_index"].isna() | samples["device_index"].isin(own)].reset_index(drop=True)


def join_groups(params: Params, run_dir: Path) -> None:
    """Rebuild the run folder's records from `groups/<group>/`: times on the head's clock, points tagged with
    group and node, and a failed point for everything a group did not finish. Each group's folder is kept."""
    manifest = read_manifest(run_dir)
    head_anchor = manifest["clock"]["anchor"]
    states = manifest["cluster"]["groups"]
    requests: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    memory: dict[str, list[pd.DataFrame]] = {GPU_FILE: [], HOST_MEMORY_FILE: []}
    engines: dict[str, Any] = {}
    for group in form_groups(params):
        state = states[group.name]
        folder = run_dir / GROUPS_DIR / group.name
        tags = {"group": group.name, "node_id": state.get("node_id"), "node_ip": state.get("node_ip")}
        if (folder / MANIFEST_FILE).exists():
            offset = clock_offset_ns(read_manifest(folder)["clock"]["anchor"], head_anchor)
            state["clock_offset_ns"] = offset
            requests.extend(_joined_requests(folder, offset))
            for row in read_jsonl(folder / POINTS_FILE):
                row["start_ns"] = _shift(row.get("start_ns"), offset)
                row["end_ns"] = _shift(row.get("end_ns"), offset)
                points.append({**row, **tags})
            for name, frames in memory.items():
                path = folder / name
                if path.exists() and path.stat().st_size > 0:
                    frame = _own_devices(pd.read_csv(path), state.get("ray_gpu_ids") or [])
                    frame["t_ns"] = frame["t_ns"] + offset
                    frames.append(frame)
            for name, engine in read_manifest(folder).get("engines", {}).items():
                engines[name] = {**engine, **tags}
            if (folder / "logs").is_dir():
                shutil.copytree(folder / "logs", run_dir / "logs", dirs_exist_ok=True)
        if state["status"] != "done":
            message = f"group {group.name} did not finish: {state.get('message') or state['status']}"
            failed = _failed_point_rows(params, group, folder, int(state.get("submitted_ns") or now_ns()), message)
            points.extend({**row, **tags} for row in failed)
    rewrite_jsonl(run_dir / REQUESTS_FILE, requests)
    rewrite_jsonl(run_dir / POINTS_FILE, points)
    for name, frames in memory.items():
        if frames:
            pd.concat(frames, ignore_index=True).sort_values("t_ns", kind="stable").to_csv(run_dir / name, index=False)
    update_manifest(run_dir, engines=engines, cluster={**manifest["cluster"], "groups": states})
    write_summary(run_dir, slo=slo_of(params))


def _connect(address: str) -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError("--cluster needs Ray, which is not installed: pip install -e '.[cluster]'") from None
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(
            f"--cluster {address}: cannot join a Ray cluster there ({error}); start one with `ray start --head` "
            f"and give its address (host:port), or `auto` on one of its nodes"
        ) from None
    return ray


def _check_resources(ray: Any, groups: list[Group], resource: str) -> None:
    available = ray.cluster_resources().get(resource, 0)
    largest = max(group.gpus for group in groups)
    if available < largest:
        raise ClusterError(
            f"the Ray cluster has {available:g} {resource} in all, but group "
            f"{next(g.name for g in groups if g.gpus == largest)} needs {largest}; start nodes that have them "
            f"(`ray start --num-gpus N`, or `--resources '{{\"{resource}\": N}}'` for a stand-in), or name the "
            f"resource they have with --gpu-resource"
        )


def _actor_options(group: Group, resource: str) -> dict[str, Any]:
    """What a group's actor holds while it lives: its GPUs (or the stand-in resource), and no retries: a group
    whose node died is marked failed and run again by --resume, not silently elsewhere."""
    once = {"max_restarts": 0, "max_task_retries": 0}
    if resource == "GPU":
        return {"num_gpus": group.gpus, "num_cpus": 0, **once}
    if resource == "CPU":
        return {"num_cpus": group.gpus, **once}
    return {"resources": {resource: group.gpus}, "num_cpus": 0, **once}


def run_on_cluster(
    params_path: str | Path,
    address: str,
    outputs_dir: str | Path = "outputs",
    resume: str | None = None,
    resource: str = "GPU",
) -> RunResult:
    """Run every co-location group as a Ray task, join what comes back into one run folder, and report it.
    Raises ClusterError, after the report is written, when a group did not finish."""
    outputs = Path(outputs_dir)
    params = load_params(params_path)
    groups = form_groups(params)
    run_dir = None
    states: dict[str, dict[str, Any]] = {}
    if resume:
        run_dir = Path(resume) if Path(resume).is_dir() else outputs / resume
        if not (run_dir / MANIFEST_FILE).is_file():
            raise ClusterError(f"--resume {resume}: no run folder {run_dir}; `ls {outputs}` lists the runs")
        states = (read_manifest(run_dir).get("cluster") or {}).get("groups", {})
    todo = [group for group in groups if states.get(group.name, {}).get("status") != "done"]
    ray = _connect(address)
    try:
        _check_resources(ray, todo or groups, resource)  # before the run folder exists: nothing half-made
        run_dir = create_run(params, params_path, run_dir, outputs)
        if not (run_dir / "params.yaml").exists():
            shutil.copy2(params_path, run_dir / "params.yaml")
        _run_groups(ray, params, params_path, todo, run_dir, resource, address, states)
    finally:
        ray.shutdown()
    join_groups(params, run_dir)
    report = reanalyse(run_dir, outputs)
    failed = [name for name, state in states.items() if state["status"] != "done"]
    if failed:
        raise ClusterError(
            f"group(s) {', '.join(failed)} did not finish ({'; '.join(str(states[n].get('message')) for n in failed)}); "
            f"their points are marked failed in {run_dir / POINTS_FILE} and the report {report} shows the rest. "
            f"Run only them again: servelab run {params_path} --cluster {address} --resume {run_dir.name}"
        )
    return RunResult(run_dir=run_dir, report=report)


def _run_groups(
    ray: Any, params: Params, params_path: str | Path, groups: list[Group], run_dir: Path, resource: str,
    address: str, states: dict[str, dict[str, Any]],
) -> None:
    """One actor per group; record each group's node as it is placed and its folder as it comes back. Actors
    that do not fit yet wait in Ray's queue until a finished group's actor is killed and frees its GPUs."""
    runner = ray.remote(GroupRunner)
    pending: dict[Any, tuple[Group, str]] = {}
    actors = {}
    for group in groups:
        states[group.name] = {
            "deployments": list(group.deployments), "resource": resource, "amount": group.gpus,
            "status": "waiting", "submitted_ns": now_ns(), "submitted_utc": wall_anchor()["utc"],
        }
        actor = runner.options(**_actor_options(group, resource)).remote()
        actors[group.name] = actor
        pending[actor.where.remote()] = (group, "placed")
        data = group_params(params, group).model_dump(mode="json")
        pending[actor.run.remote(data, str(params_path), run_dir.name, group.name)] = (group, "finished")
    log.info("%d group(s) sent to the Ray cluster at %s: %s", len(groups), address, ", ".join(g.name for g in groups))
    while pending:
        update_manifest(run_dir, cluster={"address": address, "resource": resource, "groups": states})
        ready, _ = ray.wait(list(pending), num_returns=1)
        group, event = pending.pop(ready[0])
        state = states[group.name]
        if event == "placed":
            try:
                state.update(ray.get(ready[0]), status="running")
                log.info("group %s: running on node %s (%s)", group.name, state["node_id"][:12], state["node_ip"])
            except ray.exceptions.RayError:
                continue  # the group's `run` fails the same way and says why
        else:
            _receive(ray, ready[0], group, run_dir, state)
            ray.kill(actors[group.name])
    update_manifest(run_dir, cluster={"address": address, "resource": resource, "groups": states})


def _receive(ray: Any, ref: Any, group: Group, run_dir: Path, state: dict[str, Any]) -> None:
    """Unpack one group's folder under groups/, or mark the group failed when its actor or node died."""
    try:
        outcome: GroupOutcome = ray.get(ref)
    except ray.exceptions.RayError as error:
        where = f" on node {state['node_id'][:12]} ({state.get('node_ip')})" if state.get("node_id") else ""
        state.update(status="failed", message=f"its Ray actor{where} was lost, its node dead or unreachable ({type(error).__name__})")
        log.error("group %s failed: %s: %s", group.name, state["message"], _first_line(error))
        return
    folder = run_dir / GROUPS_DIR / group.name
    shutil.rmtree(folder, ignore_errors=True)
    if outcome.archive:  # none when the group failed before its run folder was made
        _unpack(outcome.archive, folder)
    state.update(
        status=outcome.status, message=outcome.message, node_id=outcome.node_id, node_ip=outcome.node_ip,
        hostname=outcome.hostname, anchor=outcome.anchor, ray_gpu_ids=outcome.ray_gpu_ids, gpu_map=outcome.gpu_map,
    )
    log.info("group %s: %s on node %s (%s)", group.name, outcome.status, outcome.node_id[:12], outcome.node_ip)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
