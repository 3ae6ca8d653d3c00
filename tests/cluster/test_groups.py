"""How deployments form co-location groups, and how a node's clock is joined to the head's (no Ray needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from servelab.cluster import DEFAULT_GROUP, clock_offset_ns, form_groups, group_params
from servelab.errors import ParamsError
from servelab.params import load_params, parse_params

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
