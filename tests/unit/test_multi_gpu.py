"""A deployment over several GPUs: `gpus` and the parallel sizes in the params, the vLLM and SGLang flags, the compose
reservation, CUDA_VISIBLE_DEVICES for a native launch, and the planner per GPU (no engine or GPU needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from servelab.cluster import form_groups
from servelab.errors import DeployError, ParamsError
from servelab.params import Deployment, Params, load_params, parse_params
from servelab.preflight import check_memory
from servelab.serve.compose import compose_document
from servelab.serve.deploy import gpu_environment
from servelab.serve.engines import adapter_for
from servelab.serve.engines.vllm import VLLM_CUDA_CONTEXT_MIB
from servelab.serve.planner import gpus_of, plan_per_device

H200_TOTAL_MIB = 143_771
REPO = Path(__file__).resolve().parents[2]


def params(*deployments: dict[str, Any]) -> Params:
    return parse_params({"name": "gpus", "deployments": list(deployments), "sweep": {"load": [{"kind": "concurrency", "values": [1]}]}})


def vllm(name: str, utilization: float, gpus: list[int] | None = None, **engine: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "model": "Qwen/Qwen2.5-3B-Instruct",
                            "engine": {"kind": "vllm", "gpu_memory_utilization": utilization, **engine}}
    return spec | ({"gpus": gpus} if gpus is not None else {})


def sglang(name: str, gpus: list[int] | None = None, **engine: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "model": "Qwen/Qwen2.5-3B-Instruct", "engine": {"kind": "sglang", **engine}}
    return spec | ({"gpus": gpus} if gpus is not None else {})


def flag_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


# ----------------------------------------------------------------------------------------------- params
def test_a_deployment_names_its_gpus_and_parallel_sizes() -> None:
    deployment = params(vllm("split", 0.8, [2, 3], tensor_parallel_size=2)).deployments[0]
    assert deployment.gpus == (2, 3) and gpus_of(deployment) == (2, 3)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (vllm("split", 0.8, [0], tensor_parallel_size=2), "need 2 GPUs but gpus names 1"),
        (sglang("split", [0, 1, 2], tp_size=2, dp_size=2), "need 4 GPUs but gpus names 3"),
        (vllm("twice", 0.8, [1, 1]), "distinct GPU indices"),
        (vllm("none", 0.8, []), "gpus is empty"),
        (vllm("both", 0.8, [0]) | {"env": {"CUDA_VISIBLE_DEVICES": "1"}}, "not with env.CUDA_VISIBLE_DEVICES"),
    ],
)
def test_gpus_that_cannot_hold_the_deployment_are_refused_naming_the_fix(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(ParamsError, match=words):
        params(spec)


def test_client_processes_is_a_count_or_auto() -> None:
    base = {"name": "c", "deployments": [vllm("a", 0.5)], "sweep": {"load": [{"kind": "concurrency", "values": [8]}]}}
    assert parse_params(base).sweep.client_processes == 1
    for value in (4, "auto"):
        base["sweep"]["client_processes"] = value
        assert parse_params(base).sweep.client_processes == value
    base["sweep"]["client_processes"] = 0
    with pytest.raises(ParamsError, match="client_processes"):
        parse_params(base)


# ----------------------------------------------------------------------------------------------- launch
def test_vllm_gets_its_tensor_and_data_parallel_flags_and_leaves_them_out_at_one() -> None:
    split = Deployment.model_validate(vllm("split", 0.8, [0, 1, 2, 3], tensor_parallel_size=2, data_parallel_size=2))
    argv = adapter_for(split).launch(split, 8000, split.model).argv
    assert flag_value(argv, "--tensor-parallel-size") == "2" and flag_value(argv, "--data-parallel-size") == "2"
    single = Deployment.model_validate(vllm("one", 0.8))
    argv = adapter_for(single).launch(single, 8000, single.model).argv
    assert "--tensor-parallel-size" not in argv and "--data-parallel-size" not in argv


def test_sglang_gets_tp_and_dp_size_in_its_launch_and_its_compose_service() -> None:
    split = Deployment.model_validate(sglang("split", [4, 5], tp_size=2))
    argv = adapter_for(split).launch(split, 30000, split.model).argv
    assert flag_value(argv, "--tp-size") == "2" and "--dp-size" not in argv
    command = adapter_for(split).compose_service(split, 8001)["command"]
    assert flag_value(command, "--tp-size") == "2"


def test_named_gpus_set_cuda_visible_devices_for_a_native_launch() -> None:
    assert gpu_environment(Deployment.model_validate(vllm("split", 0.8, [3, 1], tensor_parallel_size=2))) == {
        "CUDA_VISIBLE_DEVICES": "3,1"
    }
    assert gpu_environment(Deployment.model_validate(vllm("all", 0.8))) == {}


def test_compose_reserves_the_named_gpus_by_device_id_and_all_of_them_otherwise() -> None:
    document = compose_document(params(vllm("split", 0.4, [0, 1], tensor_parallel_size=2), vllm("anywhere", 0.2)))
    split = document["services"]["split"]["deploy"]["resources"]["reservations"]["devices"]
    anywhere = document["services"]["anywhere"]["deploy"]["resources"]["reservations"]["devices"]
    assert split == [{"driver": "nvidia", "device_ids": ["0", "1"], "capabilities": ["gpu"]}]
    assert anywhere == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


# ----------------------------------------------------------------------------------------------- planner
def test_the_planner_plans_each_gpu_with_a_split_model_on_every_gpu_it_spans() -> None:
    plans = plan_per_device(
        params(
            vllm("split", 0.5, [0, 1], tensor_parallel_size=2),
            vllm("small", 0.3, [1]),
            vllm("big", 0.9, [2]),
            vllm("default", 0.2),
        ),
        H200_TOTAL_MIB,
    )
    assert sorted(plans) == [0, 1, 2]
    on = {index: {f.deployment: f.predicted_mib for f in plan.footprints} for index, plan in plans.items()}
    assert set(on[0]) == {"split", "default"} and set(on[1]) == {"split", "small"} and set(on[2]) == {"big"}
    # vLLM's budget is per GPU: each half of the split model holds 0.5 x the GPU plus its CUDA context.
    assert on[0]["split"] == on[1]["split"] == pytest.approx(0.5 * H200_TOTAL_MIB + VLLM_CUDA_CONTEXT_MIB)
    assert plans[0].fits and plans[1].fits and plans[2].fits


def test_a_gpu_given_more_than_it_holds_is_the_one_that_does_not_fit() -> None:
    plans = plan_per_device(params(vllm("split", 0.6, [0, 1], tensor_parallel_size=2), vllm("extra", 0.5, [1])), H200_TOTAL_MIB)
    assert plans[0].fits and not plans[1].fits


# ----------------------------------------------------------------------------------------------- issue 21's params
def test_the_two_gpu_params_parse_and_plan_each_gpu_they_use_and_fit_an_h200() -> None:
    root = REPO / "params"
    expected = {
        "h200x2-tp.yaml": {0: ["yi-6b-tp2"], 1: ["yi-6b-tp2"]},
        "h200x2-tp-sglang.yaml": {0: ["yi-6b-tp2-sglang"], 1: ["yi-6b-tp2-sglang"]},
        "h200x2-two-groups.yaml": {0: ["tinyllama-g0", "qwen2.5-3b-g0"], 1: ["tinyllama-g1", "qwen2.5-3b-g1"]},
    }
    for name, on_device in expected.items():
        loaded = load_params(root / name)
        plans = plan_per_device(loaded, H200_TOTAL_MIB)
        assert {index: [f.deployment for f in result.footprints] for index, result in plans.items()} == on_device, name
        assert all(result.fits and not result.warnings for result in plans.values()), name
        text = check_memory(loaded, H200_TOTAL_MIB)
        assert text is not None and "GPU 0:" in text and "GPU 1:" in text, name


def test_a_run_whose_second_gpu_does_not_fit_is_refused_naming_that_gpu() -> None:
    with pytest.raises(DeployError, match=r"do not fit on GPU 1, so nothing was started"):
        check_memory(params(vllm("split", 0.6, [0, 1], tensor_parallel_size=2), vllm("extra", 0.5, [1])), H200_TOTAL_MIB)


def test_the_two_group_params_form_one_cluster_group_per_gpu_and_the_split_model_one_group_of_two() -> None:
    root = REPO / "params"
    groups = form_groups(load_params(root / "h200x2-two-groups.yaml"))
    assert [(g.name, g.deployments, g.gpus) for g in groups] == [
        ("gpu0", ("tinyllama-g0", "qwen2.5-3b-g0"), 1), ("gpu1", ("tinyllama-g1", "qwen2.5-3b-g1"), 1)
    ]
    assert [(g.deployments, g.gpus) for g in form_groups(load_params(root / "h200x2-tp.yaml"))] == [(("yi-6b-tp2",), 2)]
