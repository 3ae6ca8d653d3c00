"""Memory per model for a compose run: NVML lists the containers' host pids, and each is attributed to its deployment
through its cgroup. On recorded pid and cgroup data (tests/data/recorded/compose-proc: a /proc with the cgroup files
of containerised engine processes, and what `docker inspect` answered for their containers; see its README line),
with a stand-in for the docker CLI that answers from that record and a stand-in for pynvml listing those pids."""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

import pytest
from servelab.observe import MemorySampler, PidMap, container_pids, read_samples
from servelab.observe.attribution import compose_container, container_in_cgroup, pids_by_container
from servelab.params import parse_params
from servelab.records import GPU_FILE
from servelab.session import memory_attribution
from test_gpu import StandInNvml

RECORDED = Path(__file__).resolve().parents[1] / "data" / "recorded" / "compose-proc"
INSPECTED = {name: (full_id, int(pid)) for name, full_id, pid in
             (line.split() for line in (RECORDED / "docker-inspect.txt").read_text().splitlines())}
VLLM_ID, SGLANG_ID = INSPECTED["seed-tp-vllm-small-1"][0], INSPECTED["seed-tp-sglang-small-1"][0]
MIB = 2**20


@pytest.fixture
def recorded_docker(tmp_path: Path) -> str:
    """A stand-in for the docker CLI: `docker inspect --format ... NAME` answers '<id> <pid>' from the record."""
    script = tmp_path / "docker"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"known = {{name: f'{{i}} {{p}}' for name, (i, p) in {INSPECTED!r}.items()}}\n"
        "if sys.argv[1] == 'inspect' and sys.argv[-1] in known:\n"
        "    print(known[sys.argv[-1]])\n"
        "    sys.exit(0)\n"
        "print(f'Error: No such object: {sys.argv[-1]}', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_a_processs_container_is_read_from_its_recorded_cgroup_v1_v2_and_containerd_lines() -> None:
    assert container_in_cgroup((RECORDED / "9000101" / "cgroup").read_text()) == VLLM_ID  # v2, docker-<id>.scope
    assert container_in_cgroup((RECORDED / "9000302" / "cgroup").read_text()) == SGLANG_ID  # v1, /docker/<id>
    assert container_in_cgroup((RECORDED / "9000410" / "cgroup").read_text()).startswith("5e0c2a4b")  # containerd
    assert container_in_cgroup((RECORDED / "9000501" / "cgroup").read_text()) is None  # a host session


def test_the_recorded_proc_groups_its_pids_by_container() -> None:
    grouped = pids_by_container(RECORDED)
    assert grouped[VLLM_ID] == [9000101, 9000188] and grouped[SGLANG_ID] == [9000302]
    assert 9000501 not in {pid for pids in grouped.values() for pid in pids}


def test_a_container_named_by_its_full_id_needs_no_docker_cli() -> None:
    assert container_pids(VLLM_ID, docker="/nonexistent/docker", proc=RECORDED) == [9000101, 9000188]


def test_a_container_named_by_its_compose_name_is_looked_up_with_docker_inspect(recorded_docker: str) -> None:
    assert compose_container("seed-tp", "vllm-small") == "seed-tp-vllm-small-1"
    assert container_pids("seed-tp-vllm-small-1", docker=recorded_docker, proc=RECORDED) == [9000101, 9000188]
    assert container_pids("seed-tp-not-running-1", docker=recorded_docker, proc=RECORDED) == []


def test_the_runs_pid_map_attributes_each_compose_service_to_its_deployment(recorded_docker: str) -> None:
    params = parse_params({
        "name": "seed-tp",
        "deployments": [
            {"name": "vllm-small", "model": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "engine": {"kind": "vllm"}},
            {"name": "sglang-small", "model": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "engine": {"kind": "sglang"}},
        ],
        "sweep": {"load": [{"kind": "concurrency", "values": [1]}]},
        "memory": {"compose_project": "seed-tp"},
    })  # fmt: skip
    owners = memory_attribution(params, docker=recorded_docker, proc=RECORDED).resolve()
    assert owners == {9000101: "vllm-small", 9000188: "vllm-small", 9000302: "sglang-small"}
    params_without = params.model_copy(update={"memory": params.memory.model_copy(update={"compose_project": None})})
    assert memory_attribution(params_without, docker=recorded_docker, proc=RECORDED).resolve() == {}


def test_nvml_rows_of_container_pids_carry_their_deployment(recorded_docker: str, tmp_path: Path) -> None:
    pid_map = PidMap(recorded_docker, RECORDED)
    pid_map.add_compose("seed-tp", ["vllm-small", "sglang-small"])
    # The engine core (a child in the vLLM container), SGLang, and a container that is none of ours.
    library = StandInNvml({9000188: 20_968 * MIB, 9000302: 22_250 * MIB, 9000410: 1_024 * MIB})
    with MemorySampler(tmp_path, sample_hz=100, attribution=pid_map, nvml_library=library) as sampler:
        deadline = time.monotonic() + 60
        while sampler.ticks < 10:
            assert time.monotonic() < deadline, "the sampler did not tick"
            time.sleep(0.01)
    rows = read_samples(tmp_path / GPU_FILE).query("scope == 'process' and pid == pid")
    owner = rows.groupby("pid")["deployment"].first()
    assert owner[9000188] == "vllm-small" and owner[9000302] == "sglang-small"
    assert rows.loc[rows["pid"] == 9000410, "deployment"].isna().all()
