"""servelab.serve.planner against the figures measured with real vLLM on an H100 80GB
(shared/device/measured-h100-vllm.md), and the framework rules it encodes."""

from __future__ import annotations

from typing import Any

import pytest
from servelab.params import Deployment, Params, parse_params
from servelab.serve.engines.llamacpp import embedded_gguf
from servelab.serve.engines.vllm import VLLM_CUDA_CONTEXT_MIB
from servelab.serve.planner import (
    format_plan,
    plan,
    predict,
    required_mib,
    seed_formula_mib,
    shape_for,
)

H100_TOTAL_MIB = 81_559
GIB_IN_MIB = 1024
# (model, gpu_memory_utilization, max_model_len, NVML MiB of the process, vLLM's logged KV cache GiB)
MEASURED = [
    ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 0.15, 1024, 12_598, 9.17),
    ("Qwen/Qwen2.5-3B-Instruct", 0.25, 1536, 20_968, 13.12),
    ("01-ai/Yi-6B", 0.50, 2048, 41_250, 27.35),
]
DEVICE_USED_MIB = 74_836


def params(*deployments: dict[str, Any]) -> Params:
    return parse_params({"name": "plan", "deployments": list(deployments), "sweep": {"load": [{"kind": "concurrency", "values": [1]}]}})


def vllm(name: str, model: str, utilization: float, max_model_len: int | None = None) -> dict[str, Any]:
    return {"name": name, "model": model, "engine": {"kind": "vllm", "gpu_memory_utilization": utilization, "max_model_len": max_model_len}}


def seed_config() -> Params:
    return params(*(vllm(f"m{i}", model, util, length) for i, (model, util, length, _, _) in enumerate(MEASURED)))


def one(spec: dict[str, Any]) -> Deployment:
    return params(spec).deployments[0]


@pytest.mark.parametrize(("model", "utilization", "length", "measured_mib", "kv_gib"), MEASURED)
def test_vllm_prediction_is_within_3_percent_of_the_h100_measurement(
    model: str, utilization: float, length: int, measured_mib: float, kv_gib: float
) -> None:
    footprint = predict(one(vllm("m", model, utilization, length)), H100_TOTAL_MIB)
    assert footprint.predicted_mib == pytest.approx(measured_mib, rel=0.03)
    assert footprint.kv_cache_mib == pytest.approx(kv_gib * GIB_IN_MIB, rel=0.05)


@pytest.mark.parametrize(("model", "utilization", "length", "measured_mib", "kv_gib"), MEASURED)
def test_the_seeds_formula_misses_the_same_measurement_by_more_than_10_percent(
    model: str, utilization: float, length: int, measured_mib: float, kv_gib: float
) -> None:
    footprint = predict(one(vllm("m", model, utilization, length)), H100_TOTAL_MIB)
    assert footprint.weights_mib is not None
    seed = seed_formula_mib(footprint.weights_mib, H100_TOTAL_MIB, utilization, VLLM_CUDA_CONTEXT_MIB)
    assert abs(seed - measured_mib) / measured_mib > 0.10


def test_the_seeds_three_models_fit_one_h100_and_sum_to_the_measured_device_use() -> None:
    result = plan(seed_config(), H100_TOTAL_MIB)
    assert result.fits and not result.suggestions and not result.warnings
    assert result.gpu_mib == pytest.approx(DEVICE_USED_MIB, rel=0.03)
    assert [f.deployment for f in result.footprints] == ["m0", "m1", "m2"]
    assert "fits" in format_plan(result)


def test_required_memory_for_vllm_is_its_budget_plus_context() -> None:
    deployment = one(vllm("m", "01-ai/Yi-6B", 0.5))
    assert required_mib(deployment, H100_TOTAL_MIB) == pytest.approx(0.5 * H100_TOTAL_MIB + VLLM_CUDA_CONTEXT_MIB)


def test_too_much_is_refused_and_scaled_fractions_then_fit() -> None:
    greedy = params(vllm("a", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", 0.3, 2048), vllm("b", "01-ai/Yi-6B", 0.8, 2048))
    result = plan(greedy, H100_TOTAL_MIB)
    assert not result.fits
    assert any("b: vLLM needs" in w and "refuse to start" in w for w in result.warnings)
    suggested = {s.deployment: s.suggested for s in result.suggestions}
    assert suggested["a"] / suggested["b"] == pytest.approx(0.3 / 0.8, rel=0.02)
    assert all(s.kv_tokens and s.kv_tokens > 2048 for s in result.suggestions)
    scaled = params(vllm("a", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", suggested["a"], 2048), vllm("b", "01-ai/Yi-6B", suggested["b"], 2048))
    assert plan(scaled, H100_TOTAL_MIB).fits
    assert "does NOT fit" in format_plan(result) and "suggest b: gpu_memory_utilization 0.8 ->" in format_plan(result)


def test_a_kv_cache_shorter_than_max_model_len_is_a_warning() -> None:
    result = plan(params(vllm("tiny", "01-ai/Yi-6B", 0.16, 32_768)), H100_TOTAL_MIB)
    assert not result.fits and "below max_model_len 32768" in result.warnings[0]


def test_sglang_takes_its_fraction_of_what_is_free_when_it_starts() -> None:
    sglang = one({"name": "s", "model": "Qwen/Qwen2.5-3B-Instruct", "engine": {"kind": "sglang", "mem_fraction_static": 0.4}})
    alone = predict(sglang, H100_TOTAL_MIB)
    assert alone.predicted_mib == pytest.approx(0.4 * (H100_TOTAL_MIB - alone.overhead_mib) + alone.overhead_mib)
    assert alone.predicted_mib == pytest.approx(0.4 * H100_TOTAL_MIB + alone.overhead_mib, rel=0.01)
    after_others = predict(sglang, H100_TOTAL_MIB, free_at_start_mib=H100_TOTAL_MIB / 2)
    assert after_others.predicted_mib < alone.predicted_mib / 1.9
    assert required_mib(sglang, H100_TOTAL_MIB) == alone.predicted_mib


def test_a_co_located_sglang_needs_its_share_of_what_is_free_not_of_an_empty_gpu() -> None:
    # The seed's split on an H200 as SGLang takes it: the last of three servers asks 0.861 of what the first two
    # left; measured against an empty GPU, that would be refused.
    yi = one({"name": "yi", "model": "01-ai/Yi-6B-Chat", "engine": {"kind": "sglang", "mem_fraction_static": 0.861}})
    total, left_by_the_others = 143_771.0, 84_000.0
    needed = required_mib(yi, total, free_mib=left_by_the_others)
    assert needed == pytest.approx(predict(yi, total, free_at_start_mib=left_by_the_others).predicted_mib)
    assert needed < left_by_the_others < required_mib(yi, total)
    vllm_alike = one(vllm("v", "01-ai/Yi-6B", 0.5, 2048))
    assert required_mib(vllm_alike, total, free_mib=left_by_the_others) == required_mib(vllm_alike, total)


def test_ollama_kv_cache_follows_num_ctx_times_num_parallel() -> None:
    def ollama(num_ctx: int, num_parallel: int) -> Deployment:
        return one({"name": "o", "model": "qwen2.5:3b", "engine": {"kind": "ollama", "num_ctx": num_ctx, "num_parallel": num_parallel}})

    small, large = predict(ollama(2048, 1), H100_TOTAL_MIB), predict(ollama(4096, 4), H100_TOTAL_MIB)
    # 36 layers x 2 KV heads x 128 x (K and V) x 2 bytes = 36,864 bytes per token
    assert small.kv_cache_mib == pytest.approx(2048 * 36_864 / 2**20)
    assert large.kv_cache_mib == pytest.approx(8 * small.kv_cache_mib)
    assert small.weights_mib == pytest.approx(3_085_938_688 * 4.85 / 8 / 2**20)
    assert large.predicted_mib - small.predicted_mib == pytest.approx(7 * small.kv_cache_mib)


def test_llamacpp_lives_in_host_memory_and_needs_no_gpu() -> None:
    server = one({"name": "cpu", "model": "smollm2", "engine": {"kind": "llamacpp", "ctx_size": 2048}})
    footprint = predict(server, H100_TOTAL_MIB)
    assert footprint.memory == "host" and required_mib(server, H100_TOTAL_MIB) == 0
    assert footprint.weights_mib == pytest.approx(embedded_gguf().stat().st_size / 2**20)
    # 30 layers x 3 KV heads x 64 x 2 x 2 bytes = 23,040 bytes per token
    assert footprint.kv_cache_mib == pytest.approx(2048 * 23_040 / 2**20)
    assert plan(params({"name": "cpu", "model": "smollm2", "engine": {"kind": "llamacpp"}}), H100_TOTAL_MIB).gpu_mib == 0


@pytest.mark.parametrize(
    ("model", "shape"),
    [("qwen2.5:3b", "qwen2.5-3b"), ("tinyllama:1.1b", "tinyllama-1.1b"), ("yi:6b", "yi-6b"), ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
     ("smollm2", "smollm2-135m")],
)
def test_model_names_and_tags_find_their_shape(model: str, shape: str) -> None:
    found = shape_for(one({"name": "x", "model": model, "engine": {"kind": "ollama"}}))
    assert found is not None and found.name == shape


def test_an_unknown_model_counts_only_the_overhead_and_says_so() -> None:
    footprint = predict(one({"name": "x", "model": "mystery:7b", "engine": {"kind": "ollama"}}), H100_TOTAL_MIB)
    assert footprint.weights_mib is None and "unknown" in footprint.notes[0]
