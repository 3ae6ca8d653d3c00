"""A docker compose file generated from params: one service per deployment, one profile per framework.

Each adapter writes its own service (`EngineAdapter.compose_service`); this module adds what is the same for
all of them: the profile, plain and secret environment, the start chain (`depends_on: service_healthy`,
smallest first within a framework), the named volumes, and the checks that keep the file safe to commit:
pinned image tags, loopback-only ports, and secrets only as `${NAME}` references.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from servelab.errors import ParamsError
from servelab.params import Deployment, Params, params_stem
from servelab.serve.engines.base import adapter_for, start_order
from servelab.serve.engines.containers import SHAPES_DIR

logger = logging.getLogger(__name__)

FIRST_HOST_PORT = 8001
SERVICE_KEY_ORDER = (
    "profiles", "image", "entrypoint", "command", "environment", "ports", "volumes", "ipc", "shm_size",
    "deploy", "healthcheck", "depends_on", "restart",
)


# ----------------------------------------------------------------------------------------------- checks
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def check_image_pinned(image: str, where: str) -> None:
    """Refuse an image with no tag, or tagged `latest`: the compose file must rebuild the same servers."""
    if _DIGEST.search(image):
        return
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if not tag:
        raise ParamsError(f"{where} = {image!r} has no tag; pin a version, for example {image}:<version>")
    if tag == "latest":
        raise ParamsError(f"{where} = {image!r} floats with each release; pin a version tag instead of 'latest'")


def _check(deployment: Deployment, index: int) -> None:
    adapter = adapter_for(deployment)
    image = adapter.image(deployment)
    if image is not None:
        check_image_pinned(image, f"deployments[{index}].engine.image")
    adapter.check_shape(deployment)


def host_ports(params: Params) -> dict[str, int]:
    """Each deployment's loopback port: its own, else the next free one from 8001 in params order."""
    taken = {d.port for d in params.deployments if d.port is not None}
    ports: dict[str, int] = {}
    candidate = FIRST_HOST_PORT
    for deployment in params.deployments:
        if deployment.port is not None:
            ports[deployment.name] = deployment.port
            continue
        while candidate in taken:
            candidate += 1
        ports[deployment.name] = candidate
        taken.add(candidate)
    return ports


def project_name(params: Params) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", params.name)


# ----------------------------------------------------------------------------------------------- document
def _escape(text: str) -> str:
    """Compose interpolates `$`; a literal one is written `$$`."""
    return text.replace("$", "$$")


def _environment(service: dict[str, Any], deployment: Deployment) -> dict[str, str]:
    environment = {key: _escape(str(value)) for key, value in service.get("environment", {}).items()}
    environment.update({key: _escape(value) for key, value in deployment.env.items()})
    environment.update({name: "${" + name + "}" for name in deployment.secret_env})
    return environment


def _named_volumes(services: dict[str, dict[str, Any]]) -> list[str]:
    names = set()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source and not source.startswith((".", "/", "~", "$")):
                names.add(source)
    return sorted(names)


def compose_document(params: Params) -> dict[str, Any]:
    """The compose file as a dict: a profile per framework, each started smallest first; nothing is written."""
    for index, deployment in enumerate(params.deployments):
        _check(deployment, index)
    ports = host_ports(params)
    frameworks = list(dict.fromkeys(d.engine.kind for d in params.deployments))
    services: dict[str, dict[str, Any]] = {}
    for framework in frameworks:
        group = start_order(d for d in params.deployments if d.engine.kind == framework)
        fractions = [f for f in (adapter_for(d).memory_fraction(d) for d in group) if f is not None]
        if sum(fractions) > 1.0:
            logger.warning("%s: memory fractions add up to %.2f > 1; the profile cannot co-locate", framework, sum(fractions))
        previous: str | None = None
        for deployment in group:
            service = adapter_for(deployment).compose_service(deployment, ports[deployment.name])
            if service is None:
                continue
            service["profiles"] = [framework]
            for key in ("entrypoint", "command"):
                if key in service:
                    service[key] = [_escape(str(part)) for part in service[key]]
            environment = _environment(service, deployment)
            if environment:
                service["environment"] = environment
            if previous is not None:
                service["depends_on"] = {previous: {"condition": "service_healthy"}}
            service.setdefault("restart", "no")
            ordered = {key: service[key] for key in SERVICE_KEY_ORDER if key in service}
            services[deployment.name] = ordered | {k: v for k, v in service.items() if k not in ordered}
            previous = deployment.name
    document: dict[str, Any] = {"name": project_name(params), "services": services}
    volumes = _named_volumes(services)
    if volumes:
        document["volumes"] = {name: {} for name in volumes}
    return document


class _ComposeDumper(yaml.SafeDumper):
    """Block style for mappings, one-line lists of scalars (argv reads as a command), no YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(item, (str, int, float, bool)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ComposeDumper.add_representer(list, _represent_list)


def _shown_path(params_path: str | Path) -> str:
    path = Path(params_path)
    if path.is_absolute():
        try:
            path = path.relative_to(Path.cwd())
        except ValueError:
            return path.name
    return path.as_posix()


def render_compose(params: Params, params_path: str | Path) -> str:
    """The compose file's text: a do-not-edit header naming `params_path`, then the document as YAML."""
    source = _shown_path(params_path)
    frameworks = list(dict.fromkeys(d.engine.kind for d in params.deployments))
    header = [
        f"# Generated by servelab.serve.compose from {source}; do not edit. Regenerate: servelab compose {source}",
        "# One profile per framework, started smallest first; see compose/README.md. For example:",
        f"#   docker compose -f compose/{params_stem(params_path)}.yaml --profile {frameworks[0]} up -d",
    ]
    body = yaml.dump(
        compose_document(params), Dumper=_ComposeDumper, sort_keys=False, allow_unicode=True, width=10_000
    )
    return "\n".join(header) + "\n" + body


def write_compose(params: Params, params_path: str | Path, out_dir: Path = Path("compose")) -> Path:
    """Write `out_dir/<params stem>.yaml` (and the shape folders it mounts); returns the file's path."""
    out_dir = Path(out_dir)
    text = render_compose(params, params_path)
    for deployment in params.deployments:
        if deployment.shape is not None:
            adapter_for(deployment).shape_model(deployment, out_dir / SHAPES_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{params_stem(params_path)}.yaml"
    target.write_text(text, encoding="utf-8")
    return target
