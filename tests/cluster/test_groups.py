"""How deployments form co-location groups, and how a node's clock is joined to the head's (no Ray needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from servelab.cluster import (
    DEFAULT_GROUP,
    ClusterError,
    _own_devices,
    clock_offset_ns,
    form_groups,
    gpu_map,
    group_params,
    placed_params,
)
from servelab.errors import ParamsError
from servelab.params import Params, load_params, parse_params

REPO = Path(__file__).resolve().parents[2]


def test_demo_cluster_params_form_groups_a_and_b_of_one_deployment_each():
    params = load_params(REPO / "params" / "demo-cluster.yaml")
    groups = form_groups(params)
    assert [(g.name, g.deployments, g.gpus) for g in groups] == [("a", ("smollm2-a",), 1), ("b", ("smollm2-b",), 1)]
    assert [d.name for d in group_params(params, groups[1]).deployments] == ["smollm2-b"]


def test_deployments_without_a_group_form_one_group_for_the_host():
    params = load_params(REPO / "params" / "demo.yaml")
    assert [(g.name, g.deployments) for g in form_groups(params)] == [(DEFAULT_GROUP, ("smollm2",))]


def test_deployments_whose_gpus_overlap_share_a_group_asking_for_all_their_gpus_on_stand_in_deployments():
    # Stand-ins: the params schema of this branch has no `gpus` yet (issue 17, item 1, adds it).
    def deployment(name: str, gpus: tuple[int, ...], group: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(name=name, gpus=gpus, group=group)

    params = SimpleNamespace(deployments=(
        deployment("small", (0,)), deployment("split", (1, 2)), deployment("beside", (2,)),
        deployment("named", (0,), group="mine"), deployment("cpu", ()),
    ))
    groups = form_groups(params)  # type: ignore[arg-type]
    assert [(g.name, g.deployments, g.gpus) for g in groups] == [
        ("gpu0", ("small",), 1), ("gpu1-2", ("split", "beside"), 2), ("mine", ("named",), 1), (DEFAULT_GROUP, ("cpu",), 1)
    ]


def test_a_group_name_is_checked_like_a_deployment_name():
    data = yaml.safe_load((REPO / "params" / "demo.yaml").read_text())
    data["deployments"][0]["group"] = "Has Spaces"
    with pytest.raises(ParamsError, match=r"deployments\[0\]\.group"):
        parse_params(data, "demo.yaml")


def test_clock_offset_puts_a_node_stamp_at_the_same_wall_time_on_the_head_clock():
    # The node's monotonic clock reads 5 s where the head's reads 1000 s, at the same UTC instant.
    head = {"monotonic_ns": 1_000_000_000_000, "utc": "2026-12-03T10:00:00.000000+00:00"}
    node = {"monotonic_ns": 5_000_000_000, "utc": "2026-12-03T10:00:02.500000+00:00"}
    offset = clock_offset_ns(node, head)
    # 2.5 s after its anchor on the node is 5 s after the head's anchor: 2.5 s of wall time plus 2.5 s more.
    node_stamp = node["monotonic_ns"] + 2_500_000_000
    assert node_stamp + offset == head["monotonic_ns"] + 5_000_000_000


# ----------------------------------------------------------------------------------------------- GPUs Ray gave
def _demo_with_gpus(*gpus: list[int] | None) -> Params:
    """demo-cluster's two deployments in one group, naming `gpus` each (None: left out)."""
    data = yaml.safe_load((REPO / "params" / "demo-cluster.yaml").read_text())
    for deployment, named in zip(data["deployments"], gpus, strict=True):
        deployment["group"] = "a"
        if named is not None:
            deployment["gpus"] = named
    return parse_params(data, "demo-cluster.yaml")


def test_gpu_map_puts_the_named_gpus_in_sorted_order_onto_the_ids_ray_gave_in_its_order():
    params = _demo_with_gpus([1], [0])
    assert gpu_map("a", params.deployments, ["3", "2"]) == {0: 3, 1: 2}


def test_gpu_map_is_empty_without_ray_gpus_so_a_stand_in_resource_leaves_the_params_as_written():
    params = _demo_with_gpus([0], [1])
    assert gpu_map("a", params.deployments, []) == {}
    assert placed_params(params, "a", []) == (params, {})


def test_placed_params_rewrite_each_deployments_gpus_to_the_physical_ones_and_point_memory_at_the_first():
    placed, mapping = placed_params(_demo_with_gpus([0], [0]), "a", ["1"])
    assert mapping == {0: 1}
    assert [d.gpus for d in placed.deployments] == [(1,), (1,)]
    assert placed.memory.device_index == 1


def test_a_deployment_that_names_no_gpus_gets_every_gpu_ray_gave_its_group():
    placed, mapping = placed_params(_demo_with_gpus(None, [5]), "a", ["6", "7"])
    assert mapping == {5: 6}
    assert [d.gpus for d in placed.deployments] == [(6, 7), (6,)]


def test_fewer_ray_gpus_than_the_group_names_is_an_error_naming_the_group_its_gpus_and_rays_ids():
    with pytest.raises(ClusterError, match=r"group a: its deployments name GPUs \[0, 1\] but Ray gave it 1 \(\[4\]\)"):
        gpu_map("a", _demo_with_gpus([0], [1]).deployments, ["4"])


def test_a_ray_gpu_id_that_is_not_an_index_is_an_error_naming_the_group():
    with pytest.raises(ClusterError, match=r"group a: Ray gave GPU ids \['GPU-1f2e'\], not indices"):
        gpu_map("a", _demo_with_gpus([0], [0]).deployments, ["GPU-1f2e"])


def test_a_deployment_that_sets_cuda_visible_devices_itself_is_refused_under_ray_gpus():
    data = yaml.safe_load((REPO / "params" / "demo-cluster.yaml").read_text())
    data["deployments"][0]["env"] = {"CUDA_VISIBLE_DEVICES": "0"}
    with pytest.raises(ClusterError, match=r"group b: deployment smollm2-a sets env.CUDA_VISIBLE_DEVICES"):
        placed_params(parse_params(data, "demo-cluster.yaml"), "b", ["1"])


def test_a_joined_group_keeps_the_samples_of_its_own_gpus_and_of_the_host():
    samples = pd.DataFrame({"t_ns": [1, 1, 2, 2], "device_index": [0, 1, 0, None], "used_mib": [10, 20, 11, 5]})
    assert _own_devices(samples, ["1"])["used_mib"].tolist() == [20, 5]
    assert _own_devices(samples, [])["used_mib"].tolist() == [10, 20, 11, 5]
