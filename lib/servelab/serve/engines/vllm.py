"""vLLM's OpenAI-compatible server (v1 engine): SSE streaming, Prometheus /metrics, /health, /version."""

from __future__ import annotations

import math
from typing import Any

import httpx

from servelab.params import Deployment, VllmEngine
from servelab.serve.engines.base import (
    CounterNames,
    EngineAdapter,
    Footprint,
    LaunchSpec,
    ScaledBudget,
    register,
)
from servelab.serve.engines.containers import container_model, gpu_service, http_healthcheck
from servelab.serve.footprints import MIB, dtype_bytes, kv_cache, shape_for

VLLM_CUDA_CONTEXT_MIB = 471.0
"""Memory a vLLM v1 process holds beyond gpu_memory_utilization x total: the mean of 364, 578 and 471 MiB
measured on an H100 80GB (TinyLlama 0.15, Qwen2.5-3B 0.25, Yi-6B 0.50; shared/device/measured-h100-vllm.md)."""
VLLM_RUNTIME_MIB = 992.0
"""Non-KV, non-weight memory inside vLLM's budget (activation peak, sampler, CUDA graphs): budget - weights - KV
from vLLM's own log in the same measurements (0.73, 1.00, 1.18 GiB), mean. Only used for the KV estimate."""


def _engine(deployment: Deployment) -> VllmEngine:
    engine = deployment.engine
    assert isinstance(engine, VllmEngine)
    return engine


@register
class VllmAdapter(EngineAdapter):
    kind = "vllm"
    display_name = "vLLM"
    api_flavour = "openai"
    health_path = "/health"
    metrics_path = "/metrics"
    container_port = 8000
    serves_shapes = True
    tokenize_flavour = "vllm"
    counter_names = CounterNames(
        generated_tokens="vllm:generation_tokens",  # v1; the parser drops the _total suffix of counters
        running="vllm:num_requests_running",
        waiting="vllm:num_requests_waiting",
        ttft=("vllm:time_to_first_token_seconds_sum", "vllm:time_to_first_token_seconds_count"),
        # each request's mean time per output token, one observation per request
        tpot=("vllm:request_time_per_output_token_seconds_sum", "vllm:request_time_per_output_token_seconds_count"),
    )
    packages = ("vllm", "torch")

    def server_flags(self, deployment: Deployment, model: str, host: str, port: int) -> list[str]:
        """`vllm serve` arguments after the subcommand, shared by the native launch and the compose service."""
        engine = _engine(deployment)
        flags = [
            model,
            "--host", host,
            "--port", str(port),
            "--served-model-name", self.served_model_name(deployment),
            "--gpu-memory-utilization", str(engine.gpu_memory_utilization),
            "--dtype", engine.dtype,
        ]
        if engine.max_model_len is not None:
            flags += ["--max-model-len", str(engine.max_model_len)]
        if engine.max_num_seqs is not None:
            flags += ["--max-num-seqs", str(engine.max_num_seqs)]
        if engine.enforce_eager:
            flags.append("--enforce-eager")
        if engine.tensor_parallel_size > 1:
            flags += ["--tensor-parallel-size", str(engine.tensor_parallel_size)]
        if engine.data_parallel_size > 1:
            flags += ["--data-parallel-size", str(engine.data_parallel_size)]
        if deployment.shape is not None:
            flags += ["--load-format", "dummy"]
        return flags + list(engine.extra_args)

    def launch(self, deployment: Deployment, port: int, model_path: str) -> LaunchSpec:
        engine = _engine(deployment)
        # The module, not the `vllm` console script: bundled installs carry a foreign shebang.
        argv = [engine.python, "-m", "vllm.entrypoints.cli.main", "serve"]
        return LaunchSpec(argv=argv + self.server_flags(deployment, model_path, "127.0.0.1", port))

    def compose_service(self, deployment: Deployment, host_port: int) -> dict[str, Any]:
        service = gpu_service(deployment, _engine(deployment).image, host_port, self.container_port)
        service["entrypoint"] = ["vllm", "serve"]
        service["command"] = self.server_flags(deployment, container_model(deployment), "0.0.0.0", self.container_port)
        service["healthcheck"] = http_healthcheck(deployment, self.container_port, self.health_path)
        return service

    async def version(self, client: httpx.AsyncClient, base_url: str) -> str:
        found = await super().version(client, base_url)
        return "unknown" if found == "unknown" else f"vllm {found}"

    def version_argv(self, deployment: Deployment) -> list[str] | None:
        return [_engine(deployment).python, "-c", "import vllm; print(vllm.__version__)"]

    def memory_fraction(self, deployment: Deployment) -> float | None:
        return _engine(deployment).gpu_memory_utilization

    def needs_budget_free_at_start(self) -> bool:
        return True

    def footprint(self, deployment: Deployment, total_mib: float, free_at_start_mib: float) -> Footprint:
        """vLLM v1: gpu_memory_utilization x total + CUDA context. The budget holds weights, activations and the KV
        cache together; vLLM refuses to start unless that budget is free after its CUDA context is made."""
        engine, shape = _engine(deployment), shape_for(deployment)
        budget = engine.gpu_memory_utilization * total_mib
        weights = shape.parameters * dtype_bytes(engine.dtype) / MIB if shape else None
        kv, tokens = kv_cache(shape, budget - (weights or 0) - VLLM_RUNTIME_MIB, dtype_bytes(engine.dtype))
        short = tokens is not None and engine.max_model_len is not None and tokens < engine.max_model_len
        notes = (f"KV cache of ~{tokens} tokens is below max_model_len {engine.max_model_len}: vLLM will refuse to start",) if short else ()
        return Footprint(deployment.name, self.kind, "gpu", budget + VLLM_CUDA_CONTEXT_MIB, weights, kv, tokens,
                         VLLM_CUDA_CONTEXT_MIB, "gpu_memory_utilization x total + CUDA context", notes,
                         seed_fraction=engine.gpu_memory_utilization)

    def scaled_to(self, deployment: Deployment, budget_mib: float, total_mib: float, free_mib: float) -> ScaledBudget:
        engine = _engine(deployment)
        value = math.floor(budget_mib / total_mib * 1000) / 1000
        flag = "gpu_memory_utilization"
        new = deployment.model_copy(update={"engine": engine.model_copy(update={flag: value})})
        return ScaledBudget(flag, engine.gpu_memory_utilization, value, new)
