"""SGLang's server (`python -m sglang.launch_server`): OpenAI-compatible API, /health, Prometheus /metrics."""

from __future__ import annotations

from typing import Any

import httpx

from servelab.params import Deployment, SglangEngine
from servelab.serve.compose import container_model, gpu_service, http_healthcheck
from servelab.serve.engines.base import EngineAdapter, LaunchSpec, register

SERVER_INFO_PATHS = ("/server_info", "/get_server_info")
"""Newer SGLang serves /server_info; older releases only /get_server_info. Both carry 'version'."""


def _engine(deployment: Deployment) -> SglangEngine:
    engine = deployment.engine
    assert isinstance(engine, SglangEngine)
    return engine


@register
class SglangAdapter(EngineAdapter):
    kind = "sglang"
    api_flavour = "openai"
    health_path = "/health"
    metrics_path = "/metrics"
    container_port = 30000

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
