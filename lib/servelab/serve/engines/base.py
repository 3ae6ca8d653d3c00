"""What every framework adapter provides: launch command, compose service, health, API flavour, metrics, version."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx

from servelab.params import Deployment


@dataclass(frozen=True)
class LaunchSpec:
    """A server's command line as a list (never a shell string) and the environment it adds."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


class EngineAdapter(ABC):
    """Knows one framework. Stateless: every method takes the deployment it is about."""

    kind: ClassVar[str]
    api_flavour: ClassVar[str] = "openai"
    """'openai' (/v1/completions, /v1/chat/completions, SSE) or 'ollama' (/api/generate, /api/chat, NDJSON)."""
    health_path: ClassVar[str] = "/health"
    metrics_path: ClassVar[str | None] = "/metrics"
    container_port: ClassVar[int] = 8000

    @abstractmethod
    def launch(self, deployment: Deployment, port: int, model_path: str) -> LaunchSpec:
        """The native command that serves `model_path` on 127.0.0.1:`port`."""

    @abstractmethod
    def compose_service(self, deployment: Deployment, host_port: int) -> dict[str, Any]:
        """The docker compose service (without depends_on), GPU reservation, loopback port and healthcheck."""

    def model_path(self, deployment: Deployment) -> str:
        """What the server is told to load; a shape model's folder replaces this (see servelab.serve.models)."""
        return deployment.model

    def served_model_name(self, deployment: Deployment) -> str:
        """The model name requests must carry."""
        return deployment.name

    def is_healthy(self, response: httpx.Response) -> bool:
        return response.status_code == 200

    async def version(self, client: httpx.AsyncClient, base_url: str) -> str:
        """The engine's own version string, or 'unknown'."""
        try:
            response = await client.get(base_url + "/version", timeout=5.0)
            if response.status_code == 200:
                return str(response.json().get("version", "unknown"))
        except (httpx.HTTPError, ValueError):
            pass
        return "unknown"

    async def after_ready(self, client: httpx.AsyncClient, base_url: str, deployment: Deployment) -> None:
        """Runs once the health check passes and before any load (Ollama loads its model here); default: nothing."""
        return None

    def version_argv(self, deployment: Deployment) -> list[str] | None:
        """A command that prints the version without starting a server, or None."""
        return None

    def log_hint(self, log_path: Path) -> str:
        return f"see {log_path}"


ENGINES: dict[str, type[EngineAdapter]] = {}


def register(adapter: type[EngineAdapter]) -> type[EngineAdapter]:
    ENGINES[adapter.kind] = adapter
    return adapter


def adapter_for(deployment: Deployment) -> EngineAdapter:
    """The adapter of `deployment.engine.kind`; each framework module registers itself on import."""
    kind = deployment.engine.kind
    if kind not in ENGINES:
        importlib.import_module(f"servelab.serve.engines.{kind}")
    return ENGINES[kind]()
