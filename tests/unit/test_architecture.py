"""The house rules of the package's shape: everything about an engine lives in its adapter
(lib/servelab/serve/engines/<kind>.py), nothing else branches on an engine's kind, and there is one start order."""

from __future__ import annotations

import http.server
import re
import threading
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servelab import lab, params, schema_doc
from servelab.errors import EngineError
from servelab.params import Deployment, Params, parse_params
from servelab.serve import compose, deploy, planner
from servelab.serve.deploy import Fleet, RunningServer
from servelab.serve.engines import adapter_for, all_adapters, known_kinds
from servelab.session import Lab

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "lib" / "servelab"
KIND_BRANCH = re.compile(
    r"isinstance\([^)]*(Vllm|Sglang|Ollama|LlamaCpp|Endpoint)Engine"
    r"|kind ?(==|!=|in) ?[\(\[]?['\"](vllm|sglang|ollama|llamacpp|endpoint)['\"]"
)
SWEEP = {"load": [{"kind": "concurrency", "values": [1]}], "requests_per_point": 1}


def make_params(*deployments: dict[str, Any]) -> Params:
    return parse_params({"name": "t", "deployments": list(deployments), "sweep": SWEEP}, "<test>")


def union_kinds() -> list[str]:
    """The engine kinds the params union accepts."""
    union = typing.get_args(params.EngineParams)[0]
    return [typing.get_args(member.model_fields["kind"].annotation)[0] for member in typing.get_args(union)]


# ----------------------------------------------------------------------------------------------- one engine, one file
def test_no_code_outside_the_adapters_and_the_params_union_branches_on_an_engine_kind() -> None:
    """The issue's acceptance grep: no isinstance on *Engine classes and no kind == 'vllm' outside serve/engines/
    and params.py."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[:2] == ("serve", "engines") or relative == Path("params.py"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if KIND_BRANCH.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert found == []


def test_the_rule_catches_a_kind_branch() -> None:
    """The pattern above is not vacuous: it matches the shapes of branch it exists to forbid."""
    for line in ('if deployment.engine.kind == "vllm":', "isinstance(engine, (VllmEngine, SglangEngine))",
                 "if engine.kind != 'llamacpp':", "kind in ('ollama', 'endpoint')"):
        assert KIND_BRANCH.search(line), line


def test_every_kind_of_the_params_union_has_an_adapter_file_and_a_reference_section() -> None:
    assert sorted(union_kinds()) == known_kinds()
    titles = [title for title, _ in schema_doc.SECTIONS]
    for kind in union_kinds():
        assert adapter_for(Deployment.model_validate({"name": "a", "model": "m", "engine": {"kind": kind, **_required(kind)}})).kind == kind
        assert any(title.endswith(f"engine, kind: {kind}") for title in titles), titles


def _required(kind: str) -> dict[str, Any]:
    """The fields an engine kind cannot do without (a running endpoint needs its URL)."""
    return {"base_url": "http://127.0.0.1:9"} if kind == "endpoint" else {}


def test_every_adapter_answers_every_question() -> None:
    for kind, adapter in all_adapters().items():
        assert adapter.kind == kind
        assert adapter.display_name
        assert adapter.api_flavour in ("openai", "ollama")
        assert adapter.health_path.startswith("/")


class UnknownEngine:
    """An engine params object whose kind has no adapter (as a new params class without its adapter file)."""

    kind = "tgi"
    image = "ghcr.io/huggingface/text-generation-inference:3.3.4"


def unknown_deployment() -> Deployment:
    return Deployment.model_construct(name="t", model="m", shape=None, engine=UnknownEngine(), port=None,
                                      startup_timeout_s=600.0, env={}, secret_env=())


def test_an_unknown_engine_kind_is_an_engine_error_naming_the_kind_and_the_known_ones() -> None:
    with pytest.raises(EngineError, match=r"'tgi' has no adapter; known kinds: .*llamacpp.*vllm"):
        adapter_for(unknown_deployment())


def test_the_planner_refuses_an_unknown_engine_with_an_engine_error_not_an_assertion() -> None:
    with pytest.raises(EngineError, match="tgi"):
        planner.predict(unknown_deployment(), total_mib=81_559)
    with pytest.raises(EngineError, match="tgi"):
        planner.required_mib(unknown_deployment(), 81_559)


# ----------------------------------------------------------------------------------------------- one start order
MIXED_FLEET = (
    {"name": "big", "model": "org/big", "engine": {"kind": "vllm", "gpu_memory_utilization": 0.5}},
    {"name": "cpu", "model": "smollm2", "engine": {"kind": "llamacpp"}},
    {"name": "ol", "model": "qwen2.5:3b", "engine": {"kind": "ollama"}},
    {"name": "small", "model": "org/small", "engine": {"kind": "vllm", "gpu_memory_utilization": 0.15}},
)


def test_native_launch_and_compose_order_the_same_mixed_fleet_identically() -> None:
    """The review's case: [vLLM 0.5, llama.cpp, Ollama, vLLM 0.15] came out cpu, ol, small, big natively and
    small, big, ol, cpu in compose. Servers without a memory flag start first (they claim no share up front)."""
    fleet = make_params(*MIXED_FLEET).deployments
    native = [d.name for d in deploy.start_order(fleet)]
    composed = [d.name for d in compose.start_order(list(fleet))]
    assert native == composed == ["cpu", "ol", "small", "big"]
    assert [f.deployment for f in planner.plan(fleet, total_mib=81_559).footprints] == native


def test_compose_chains_each_profile_in_the_one_start_order() -> None:
    fleet = make_params(*MIXED_FLEET)
    services = compose.compose_document(fleet)["services"]
    assert services["big"]["depends_on"] == {"small": {"condition": "service_healthy"}}
    assert "depends_on" not in services["small"]


# ----------------------------------------------------------------------------------------------- health path
class OllamaHealthStandIn(http.server.BaseHTTPRequestHandler):
    """A stand-in for `ollama serve`'s health answers: 200 at /api/version only, 404 elsewhere (as Ollama does at
    /health)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status = 200 if self.path == "/api/version" else 404
        body = b'{"version":"0.12.6"}' if status == 200 else b"404 page not found"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def ollama_stand_in() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OllamaHealthStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_deployment_table_probes_ollama_at_its_adapters_health_path_on_a_stand_in(ollama_stand_in: str, tmp_path: Path) -> None:
    """The notebook's table took the health path from a registry that was empty in a fresh kernel, so Ollama was
    probed at /health and shown unhealthy; it now asks the deployment's adapter."""
    run_params = make_params({"name": "ol", "model": "qwen2.5:3b", "engine": {"kind": "ollama"}})
    port = int(ollama_stand_in.rsplit(":", 1)[1])
    server = RunningServer(name="ol", framework="ollama", model="qwen2.5:3b", served_model="qwen2.5:3b",
                           api_flavour="ollama", base_url=ollama_stand_in, port=port, pid=0, log_path="", argv=[],
                           launched_ns=0, ready_ns=0)
    current = Lab(params=run_params, run_dir=tmp_path, fleet=Fleet(run_dir=tmp_path, servers={"ol": server}, owned=False))
    assert lab.deployment_table(current)["healthy"].tolist() == [True]
