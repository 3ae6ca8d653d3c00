"""SGLang's server (`python -m sglang.launch_server`): OpenAI-compatible API, /health, Prometheus /metrics."""

from __future__ import annotations

import math
from typing import Any

import httpx

from servelab.params import Deployment, SglangEngine
from servelab.serve.engines.base import (
    CounterNames,
    EngineAdapter,
    Footprint,
    LaunchSpec,
    ScaledBudget,
    register,
)
from servelab.serve.engines.containers import container_model, gpu_service, http_healthcheck
from servelab.serve.engines.vllm import VLLM_CUDA_CONTEXT_MIB
from servelab.serve.footprints import MIB, dtype_bytes, kv_cache, shape_for

SGLANG_CUDA_CONTEXT_MIB = VLLM_CUDA_CONTEXT_MIB
"""Assumed equal to vLLM's (same torch, same driver); not measured."""

SERVER_INFO_PATHS = ("/server_info", "/get_server_info")
"""Newer SGLang serves /server_info; older releases only /get_server_info. Both carry 'version'."""


def _engine(deployment: Deployment) -> SglangEngine:
    engine = deployment.engine
    assert isinstance(engine, SglangEngine)
    return engine


@register
class SglangAdapter(EngineAdapter):
    kind = "sglang"
    display_name = "SGLang"
    api_flavour = "openai"
    health_path = "/health"
    metrics_path = "/metrics"
    container_port = 30000
    serves_shapes = True
    counter_names = CounterNames(
        generated_tokens="sglang:generation_tokens",
        running="sglang:num_running_reqs",
        waiting="sglang:num_queue_reqs",
        ttft=("sglang:time_to_first_token_seconds_sum", "sglang:time_to_first_token_seconds_count"),
        # every gap between two output tokens
        tpot=("sglang:inter_token_latency_seconds_sum", "sglang:inter_token_latency_seconds_count"),
    )
    packages = ("sglang", "torch")

    def server_flags(self, deployment: Deployment, model: str, host: str, port: int) -> list[str]:
        """`sglang.launch_server` arguments, shared by the native launch and the compose service."""
        engine = _engine(deployment)
        flags = [
            "--model-path", model,
            "--host", host,
            "--port", str(port),
            "--served-model-name", self.served_model_name(deployment),
            "--mem-fraction-static", str(engine.mem_fraction_static),
            "--dtype", engine.dtype,
            "--enable-metrics",
        ]
        if engine.context_length is not None:
            flags += ["--context-length", str(engine.context_length)]
        if engine.max_running_requests is not None:
            flags += ["--max-running-requests", str(engine.max_running_requests)]
        if engine.tp_size > 1:
            flags += ["--tp-size", str(engine.tp_size)]
        if engine.dp_size > 1:
            flags += ["--dp-size", str(engine.dp_size)]
        if deployment.shape is not None:
            flags += ["--load-format", "dummy"]
        return flags + list(engine.extra_args)

    def launch(self, deployment: Deployment, port: int, model_path: str) -> LaunchSpec:
        argv = [_engine(deployment).python, "-m", "sglang.launch_server"]
        return LaunchSpec(argv=argv + self.server_flags(deployment, model_path, "127.0.0.1", port))

    def compose_service(self, deployment: Deployment, host_port: int) -> dict[str, Any]:
        service = gpu_service(deployment, _engine(deployment).image, host_port, self.container_port)
        service["entrypoint"] = ["python3", "-m", "sglang.launch_server"]
        service["command"] = self.server_flags(deployment, container_model(deployment), "0.0.0.0", self.container_port)
        service["healthcheck"] = http_healthcheck(deployment, self.container_port, self.health_path)
        return service

    async def version(self, client: httpx.AsyncClient, base_url: str) -> str:
        for path in SERVER_INFO_PATHS:
            try:
                response = await client.get(base_url + path, timeout=5.0)
                if response.status_code == 200:
                    found = response.json().get("version")
                    if found:
                        return f"sglang {found}"
            except (httpx.HTTPError, ValueError, AttributeError):
                continue
        return "unknown"

    def version_argv(self, deployment: Deployment) -> list[str] | None:
        return [_engine(deployment).python, "-c", "import sglang; print(sglang.__version__)"]

    def memory_fraction(self, deployment: Deployment) -> float | None:
        return _engine(deployment).mem_fraction_static

    def footprint(self, deployment: Deployment, total_mib: float, free_at_start_mib: float) -> Footprint:
        """CUDA context + mem_fraction_static x (memory free when it starts). The fraction is of the memory free after
        its context is made, so a server started after others gets less; on an empty GPU this is about
        mem_fraction_static x total + context. Activations and CUDA graphs come on top (not modelled)."""
        engine, shape = _engine(deployment), shape_for(deployment)
        static = engine.mem_fraction_static * max(0.0, free_at_start_mib - SGLANG_CUDA_CONTEXT_MIB)
        weights = shape.parameters * dtype_bytes(engine.dtype) / MIB if shape else None
        kv, tokens = kv_cache(shape, static - (weights or 0), dtype_bytes(engine.dtype))
        notes: tuple[str, ...] = ("activations and CUDA graphs come on top (not modelled)",)
        if tokens == 0:
            notes += ("no room left for a KV cache after the weights: SGLang will refuse to start",)
        return Footprint(deployment.name, self.kind, "gpu", static + SGLANG_CUDA_CONTEXT_MIB, weights, kv, tokens,
                         SGLANG_CUDA_CONTEXT_MIB, "mem_fraction_static x free at start + CUDA context", notes)

    def scaled_to(self, deployment: Deployment, budget_mib: float, total_mib: float, free_mib: float) -> ScaledBudget:
        engine = _engine(deployment)
        value = math.floor(budget_mib / max(1.0, free_mib - SGLANG_CUDA_CONTEXT_MIB) * 1000) / 1000
        flag = "mem_fraction_static"
        new = deployment.model_copy(update={"engine": engine.model_copy(update={flag: value})})
        return ScaledBudget(flag, engine.mem_fraction_static, value, new)
