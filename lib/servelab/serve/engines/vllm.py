"""vLLM's OpenAI-compatible server (v1 engine): SSE streaming, Prometheus /metrics, /health, /version."""

from __future__ import annotations

from typing import Any

import httpx

from servelab.params import Deployment, VllmEngine
from servelab.serve.compose import container_model, gpu_service, http_healthcheck
from servelab.serve.engines.base import EngineAdapter, LaunchSpec, register


def _engine(deployment: Deployment) -> VllmEngine:
    engine = deployment.engine
    assert isinstance(engine, VllmEngine)
    return engine


@register
class VllmAdapter(EngineAdapter):
    kind = "vllm"
    api_flavour = "openai"
    health_path = "/health"
    metrics_path = "/metrics"
    container_port = 8000

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
