"""Engine kind `endpoint`, a server servelab did not start: its params, its adapter, the API key sent as a bearer
token and kept out of every file, remote memory reported as not measured, and one `ollama serve` holding several
models, each checked through /api/ps at every load point. The servers here are stand-ins: small loopback HTTP
servers in this process that replay recorded or documented response shapes (tests/data/recorded/)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from servelab.analyse import memory_tables
from servelab.analyse.frames import summary_frame
from servelab.errors import DeployError, ParamsError
from servelab.measure.sweep import run_sweep
from servelab.params import Deployment, Params, parse_params
from servelab.records import LOADED_MODELS_FILE, POINTS_FILE, REQUESTS_FILE, latest_points, read_jsonl
from servelab.report import tables as report_tables
from servelab.serve import compose, deploy, planner
from servelab.serve.engines import adapter_for
from servelab.serve.engines.ollama import server_environment
from servelab.session import create_run

RECORDED = Path(__file__).parents[1] / "data" / "recorded"
API_KEY = "stand-in-key-7f3a9c2e81d64b05"
KEY_VARIABLE = "SERVELAB_TEST_ENDPOINT_KEY"


def endpoint(name: str = "remote", secret_env: tuple[str, ...] = (), **engine: Any) -> dict[str, Any]:
    return {
        "name": name, "model": engine.pop("model", "served-model"), "secret_env": list(secret_env),
        "engine": {"kind": "endpoint", "base_url": "http://127.0.0.1:9", **engine}, "startup_timeout_s": 10,
    }


def make_params(*deployments: dict[str, Any], **sweep: Any) -> Params:
    data = {
        "name": "endpoint-test",
        "deployments": list(deployments),
        "sweep": {"languages": ["en"], "input_tokens": 16, "output_tokens": 8, "requests_per_point": 3,
                  "warmup_requests": 0, "load": [{"kind": "concurrency", "values": [1, 2]}], **sweep},
    }
    return parse_params(data, "<test>")


# ----------------------------------------------------------------------------------------------- params and adapter
def test_an_endpoint_params_file_validates_and_defaults_the_served_model_to_the_model() -> None:
    params = make_params(endpoint(base_url="http://127.0.0.1:8000/", api="openai"))
    deployment = params.deployments[0]
    adapter = adapter_for(deployment)
    assert deployment.engine.base_url == "http://127.0.0.1:8000"
    assert adapter.served_model_name(deployment) == "served-model"
    assert (adapter.api_flavour_for(deployment), adapter.health_path_for(deployment)) == ("openai", "/v1/models")
    assert adapter.metrics_path_for(deployment) is None and adapter.counter_names_for(deployment) is None
    assert not adapter.starts_server


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://host/x", "http://user:pw@host:1", "http://host name"])
def test_a_base_url_that_is_not_an_http_url_is_refused(url: str) -> None:
    with pytest.raises(ParamsError, match="base_url"):
        make_params(endpoint(base_url=url))


def test_metrics_names_the_engine_whose_counters_and_tokenizer_are_read() -> None:
    deployment = make_params(endpoint(api="openai", metrics="vllm", served_model="org/Model")).deployments[0]
    adapter = adapter_for(deployment)
    vllm = adapter_for(Deployment.model_validate({"name": "v", "model": "m", "engine": {"kind": "vllm"}}))
    assert adapter.counter_names_for(deployment) == vllm.counter_names
    assert adapter.metrics_path_for(deployment) == "/metrics"
    assert adapter.tokenize_flavour_for(deployment) == "vllm"
    assert adapter.served_model_name(deployment) == "org/Model"


def test_an_ollama_endpoint_is_probed_and_listed_as_ollama() -> None:
    deployment = make_params(endpoint(api="ollama")).deployments[0]
    adapter = adapter_for(deployment)
    assert (adapter.health_path_for(deployment), adapter.loaded_models_path_for(deployment)) == ("/api/version", "/api/ps")


def test_compose_starts_nothing_for_an_endpoint_and_the_planner_predicts_nothing() -> None:
    params = make_params(endpoint(), {"name": "v", "model": "org/m", "engine": {"kind": "vllm", "gpu_memory_utilization": 0.2}})
    assert list(compose.compose_document(params)["services"]) == ["v"]
    footprint = {f.deployment: f for f in planner.plan(params, total_mib=81_559).footprints}["remote"]
    assert footprint.memory == "elsewhere" and planner.required_mib(params.deployments[0], 81_559) == 0.0


def test_an_endpoint_sends_one_api_key() -> None:
    deployment = make_params(endpoint(secret_env=("A_KEY", "B_KEY"))).deployments[0]
    with pytest.raises(ParamsError, match="one API key"):
        adapter_for(deployment).api_key_env(deployment)


def test_a_missing_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    with pytest.raises(DeployError, match=KEY_VARIABLE):
        deploy.api_key_headers(KEY_VARIABLE)


def test_ollama_holds_several_models_when_asked() -> None:
    engine = Deployment.model_validate(
        {"name": "o", "model": "qwen2.5:7b", "engine": {"kind": "ollama", "max_loaded_models": 3, "num_parallel": 4}}
    ).engine
    environment = server_environment(engine, "127.0.0.1", 11434)  # type: ignore[arg-type]
    assert environment["OLLAMA_MAX_LOADED_MODELS"] == "3" and environment["OLLAMA_NUM_PARALLEL"] == "4"


# ----------------------------------------------------------------------------------------------- memory
def test_a_remote_host_has_no_process_to_find() -> None:
    assert deploy.listening_pid("http://192.0.2.10:8000") is None  # TEST-NET-1: never this host; nothing is sent


def test_the_memory_table_says_not_measured_for_a_remote_endpoint_never_zero() -> None:
    engines = {"far": {"framework": "endpoint", "started": False, "memory": deploy.REMOTE_NOT_MEASURED}}
    table = memory_tables.endpoint_memory(engines, pd.DataFrame())
    row = table.iloc[0]
    assert row["process"] == "not measured: remote endpoint" and row["memory"] == "not measured"
    assert row["measured_mib"] is None and row["peak_mib"] is None


# ----------------------------------------------------------------------------------------------- stand-in servers
class StandIn(BaseHTTPRequestHandler):
    """A stand-in server replaying recorded shapes: OpenAI SSE (llama.cpp's recorded stream) behind a bearer key,
    or Ollama's NDJSON with a documented /api/ps of two loaded models, one spilled."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        self.server.authorizations.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        if self.headers.get("Authorization") == f"Bearer {API_KEY}":
            return True
        self._answer(401, b'{"error":"invalid api key"}')
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        routes = {
            "/v1/models": b'{"object":"list","data":[{"id":"served-model"}]}',
            "/api/version": b'{"version":"0.12.6"}',
            "/api/ps": (RECORDED / "ollama_ps_two_models.json").read_bytes(),
        }
        if self.path.startswith("/v1/") and not self._authorised():
            return
        if self.path in routes:
            self._answer(200, routes[self.path])
        else:
            self._answer(404, b"404 page not found", "text/plain")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/completions":
            if self._authorised():
                self._answer(200, (RECORDED / "llamacpp_completions.sse").read_bytes(), "text/event-stream")
        elif self.path == "/api/generate":
            self._answer(200, (RECORDED / "ollama_generate.ndjson").read_bytes(), "application/x-ndjson")
        else:
            self._answer(404, b"404 page not found", "text/plain")


@pytest.fixture
def stand_in() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    server.daemon_threads = True
    server.authorizations = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def measure(params: Params, run_dir: Path) -> None:
    """What `servelab run` does between deploy and analysis, without the notebooks: attach, sweep, close."""
    create_run(params, "endpoint-test.yaml", run_dir)
    with deploy.deploy(params, run_dir) as fleet:
        run_sweep(params, run_dir, fleet, progress=False)


def test_the_api_key_goes_as_a_bearer_token_and_into_no_file_on_a_stand_in(
    stand_in: ThreadingHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_VARIABLE, API_KEY)
    params = make_params(endpoint(base_url=url_of(stand_in), api="openai", secret_env=(KEY_VARIABLE,)))
    run_dir = tmp_path / "run"
    measure(params, run_dir)
    records = list(read_jsonl(run_dir / REQUESTS_FILE))
    assert len(records) == 6 and all(r["error_class"] is None for r in records)
    assert stand_in.authorizations and set(stand_in.authorizations) == {f"Bearer {API_KEY}"}  # type: ignore[attr-defined]
    written = [path for path in run_dir.rglob("*") if path.is_file()]
    assert written and not [path for path in written if API_KEY in path.read_text(errors="replace")]


def test_without_the_key_the_stand_in_refuses_and_nothing_is_measured(
    stand_in: ThreadingHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_VARIABLE, "a-wrong-key-of-some-length")
    params = make_params(endpoint(base_url=url_of(stand_in), api="openai", secret_env=(KEY_VARIABLE,)))
    params = params.model_copy(update={"deployments": (params.deployments[0].model_copy(update={"startup_timeout_s": 1.0}),)})
    with pytest.raises(Exception, match="HTTP 401"):
        deploy.deploy(params, tmp_path / "run")


def test_an_endpoint_on_this_host_is_found_through_its_port_and_never_stopped(
    stand_in: ThreadingHTTPServer, tmp_path: Path
) -> None:
    """The stand-in listens inside this test process, so the process found through its port is this one; the
    fleet's close must leave it running (the test would not finish otherwise)."""
    import os

    params = make_params(endpoint(base_url=url_of(stand_in), api="ollama", model="tinyllama:1.1b"))
    launched: list[tuple[str, int]] = []
    with deploy.deploy(params, tmp_path / "run", on_launched=lambda name, pid: launched.append((name, pid))) as fleet:
        server = fleet["remote"]
        assert (server.pid, server.started, server.version) == (os.getpid(), False, "ollama 0.12.6")
        assert server.listener.endswith(f"(pid {os.getpid()}) on port {server.port}")
    assert launched == [("remote", os.getpid())]
    assert not (tmp_path / "run" / deploy.STATE_FILE).exists()


def test_one_ollama_serve_with_two_models_flags_the_spilled_one_on_recorded_shapes(
    stand_in: ThreadingHTTPServer, tmp_path: Path
) -> None:
    """One `ollama serve` (the stand-in) holds two models, each measured as its own deployment; at every load
    point /api/ps is read, and the model whose size_vram is below its size is flagged in the report's warnings."""
    url = url_of(stand_in)
    params = make_params(
        endpoint("tiny", base_url=url, api="ollama", model="tinyllama:1.1b"),
        endpoint("qwen", base_url=url, api="ollama", model="qwen2.5:7b"),
    )
    run_dir = tmp_path / "run"
    measure(params, run_dir)
    points = latest_points(run_dir)
    assert points and all(point.status == "done" for point in points.values())
    loaded = memory_tables.loaded_models_frame(run_dir)
    assert set(loaded["point_id"]) == set(points)  # every load point, interference point included
    assert set(loaded["model"]) == {"tinyllama:1.1b", "qwen2.5:7b"}
    spilled = loaded[loaded["spilled"]]
    assert set(spilled["model"]) == {"qwen2.5:7b"} and (spilled["vram_mib"] == 3072.0).all()
    checks = memory_tables.loaded_models(run_dir, pd.DataFrame()).reset_index()
    assert checks.groupby("model")["spilled_to_cpu"].all().to_dict() == {"qwen2.5:7b": True, "tinyllama:1.1b": False}
    assert (checks[checks["model"] == "qwen2.5:7b"]["on_gpu_pct"] == 53.0).all()
    checks_shown = report_tables.validity(run_dir, summary_frame(run_dir), pd.DataFrame(), pd.DataFrame())
    flagged = [c.finding for c in checks_shown if c.check == "Ollama models on the CPU"]
    assert len(flagged) == 1 and flagged[0].startswith("qwen2.5:7b (served for qwen)") and "3,072 of its 5,798 MiB" in flagged[0]
    assert "spilled to the CPU" in flagged[0]
    assert json.loads((run_dir / LOADED_MODELS_FILE).read_text().splitlines()[0])["schema_version"] >= 1
    assert (run_dir / POINTS_FILE).exists()
