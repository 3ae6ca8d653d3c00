"""A server that runs already (kind `endpoint`): a vLLM on another host, a Kubernetes Service, a user's
`ollama serve` holding several models. servelab neither starts nor stops it; it only sends load and reads what
the server tells (health, version, /metrics, Ollama's /api/ps).

Its memory is measured only when the URL is on this host and the process listening on its port can be found
(`servelab.serve.deploy.listening_pid`): that process tree is then attributed as for a server servelab started.
Otherwise the report says 'not measured: remote endpoint'.
"""

from __future__ import annotations

from typing import Any

import httpx

from servelab.errors import EngineError, ParamsError
from servelab.params import Deployment, EndpointEngine
from servelab.serve.engines.base import (
    CounterNames,
    EngineAdapter,
    Footprint,
    LaunchSpec,
    LoadedModel,
    adapter_for_kind,
    register,
)

HEALTH_PATHS = {"openai": "/v1/models", "ollama": "/api/version"}
"""What every server of that API answers, whichever engine it is (OpenAI-style servers need not have /health)."""


def _engine(deployment: Deployment) -> EndpointEngine:
    engine = deployment.engine
    assert isinstance(engine, EndpointEngine)
    return engine


def _counting_engine(deployment: Deployment) -> EngineAdapter | None:
    """The adapter of the engine whose /metrics the endpoint serves, as its params' `metrics` names it."""
    metrics = _engine(deployment).metrics
    return None if metrics == "none" else adapter_for_kind(metrics)


@register
class EndpointAdapter(EngineAdapter):
    kind = "endpoint"
    display_name = "endpoint"
    starts_server = False
    metrics_path = None
    health_path = HEALTH_PATHS["openai"]

    def launch(self, deployment: Deployment, port: int, model_path: str) -> LaunchSpec:
        raise EngineError(f"{deployment.name}: an endpoint runs already at {_engine(deployment).base_url}; nothing is launched")

    def compose_service(self, deployment: Deployment, host_port: int) -> dict[str, Any] | None:
        return None

    def endpoint_url(self, deployment: Deployment) -> str | None:
        return _engine(deployment).base_url

    def api_key_env(self, deployment: Deployment) -> str | None:
        if len(deployment.secret_env) > 1:
            raise ParamsError(
                f"deployment {deployment.name!r}: an endpoint sends one API key, but secret_env names "
                f"{', '.join(deployment.secret_env)}; keep only the variable that holds its key"
            )
        return deployment.secret_env[0] if deployment.secret_env else None

    def served_model_name(self, deployment: Deployment) -> str:
        return _engine(deployment).served_model or deployment.model

    def health_path_for(self, deployment: Deployment) -> str:
        return HEALTH_PATHS[_engine(deployment).api]

    def api_flavour_for(self, deployment: Deployment) -> str:
        return _engine(deployment).api

    def metrics_path_for(self, deployment: Deployment) -> str | None:
        counting = _counting_engine(deployment)
        return None if counting is None else counting.metrics_path

    def counter_names_for(self, deployment: Deployment) -> CounterNames | None:
        counting = _counting_engine(deployment)
        return None if counting is None else counting.counter_names

    def tokenize_flavour_for(self, deployment: Deployment) -> str | None:
        # The engine its /metrics names likely tokenizes too; if not, the sweep estimates prompt lengths.
        counting = _counting_engine(deployment)
        return None if counting is None else counting.tokenize_flavour

    def loaded_models_path_for(self, deployment: Deployment) -> str | None:
        return adapter_for_kind("ollama").loaded_models_path if _engine(deployment).api == "ollama" else None

    def loaded_models(self, body: Any) -> list[LoadedModel]:
        return adapter_for_kind("ollama").loaded_models(body)

    async def version(self, client: httpx.AsyncClient, base_url: str) -> str:
        # Which engine it is is unknown here; each engine's own probe answers only for its engine.
        for kind in ("vllm", "sglang", "llamacpp", "ollama"):
            found = await adapter_for_kind(kind).version(client, base_url)
            if found != "unknown" and "sources)" not in found:
                return found
        return "unknown"

    def footprint(self, deployment: Deployment, total_mib: float, free_at_start_mib: float) -> Footprint:
        return Footprint(deployment.name, self.kind, "elsewhere", 0.0, None, None, None, 0.0,
                         "started elsewhere: not predicted", ("servelab did not start it; its memory is not planned",))
