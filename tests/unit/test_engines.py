"""The vLLM, SGLang and Ollama adapters: argv lists and flags, compose services, health/metrics/API facts,
version probes and Ollama's pull-and-load step, against httpx mock transports (no engine needed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from servelab.errors import EngineError, ParamsError
from servelab.params import Deployment
from servelab.serve.engines import ENGINES, adapter_for
from servelab.serve.engines.ollama import OllamaAdapter, keep_alive_value

SHELL_MARKERS = ("sh", "bash", "/bin/sh", "/bin/bash", "cmd", "powershell")


def deployment(kind: str, model: str = "Qwen/Qwen2.5-3B-Instruct", **fields: Any) -> Deployment:
    engine = {"kind": kind, **fields.pop("engine", {})}
    return Deployment.model_validate({"name": f"{kind}-test", "model": model, "engine": engine, **fields})


def flag_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def assert_plain_argv(argv: list[str]) -> None:
    assert isinstance(argv, list) and argv
    assert all(isinstance(part, str) for part in argv)
    assert argv[0] not in SHELL_MARKERS and "-c" not in argv[:2]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def client_for(handler: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


# ----------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("kind", ["vllm", "sglang", "ollama"])
def test_each_framework_module_registers_its_adapter_on_demand(kind: str) -> None:
    adapter = adapter_for(deployment(kind, model="tinyllama:1.1b" if kind == "ollama" else "m"))
    assert adapter.kind == kind and ENGINES[kind] is type(adapter)


@pytest.mark.parametrize(
    ("kind", "flavour", "health", "metrics"),
    [("vllm", "openai", "/health", "/metrics"), ("sglang", "openai", "/health", "/metrics"),
     ("ollama", "ollama", "/api/version", None)],
)
def test_api_flavour_health_and_metrics_paths(kind: str, flavour: str, health: str, metrics: str | None) -> None:
    adapter = adapter_for(deployment(kind, model="x"))
    assert (adapter.api_flavour, adapter.health_path, adapter.metrics_path) == (flavour, health, metrics)


# ----------------------------------------------------------------------------------------------- vLLM
def test_vllm_argv_maps_every_typed_flag_and_passes_extra_args_last() -> None:
    d = deployment("vllm", engine={
        "gpu_memory_utilization": 0.15, "max_model_len": 1024, "max_num_seqs": 32, "dtype": "float16",
        "enforce_eager": True, "extra_args": ["--seed", "7"], "python": "/opt/py/bin/python3",
    })
    spec = adapter_for(d).launch(d, 8123, "/models/qwen")
    argv = spec.argv
    assert_plain_argv(argv)
    assert argv[:5] == ["/opt/py/bin/python3", "-m", "vllm.entrypoints.cli.main", "serve", "/models/qwen"]
    assert flag_value(argv, "--host") == "127.0.0.1"
    assert flag_value(argv, "--port") == "8123"
    assert flag_value(argv, "--served-model-name") == "vllm-test"
    assert flag_value(argv, "--gpu-memory-utilization") == "0.15"
    assert flag_value(argv, "--max-model-len") == "1024"
    assert flag_value(argv, "--max-num-seqs") == "32"
    assert flag_value(argv, "--dtype") == "float16"
    assert "--enforce-eager" in argv
    assert argv[-2:] == ["--seed", "7"]
    assert "--load-format" not in argv


def test_vllm_leaves_out_flags_that_are_not_set() -> None:
    d = deployment("vllm")
    argv = adapter_for(d).launch(d, 8000, "m").argv
    for flag in ("--max-model-len", "--max-num-seqs", "--enforce-eager", "--load-format"):
        assert flag not in argv
    assert flag_value(argv, "--gpu-memory-utilization") == "0.9"


def test_vllm_serves_a_shape_with_dummy_weights() -> None:
    d = deployment("vllm", shape="tinyllama-1.1b")
    argv = adapter_for(d).launch(d, 8000, "/cache/shapes/tinyllama-1.1b").argv
    assert flag_value(argv, "--load-format") == "dummy"
    assert argv[4] == "/cache/shapes/tinyllama-1.1b"


def test_vllm_version_probe_reads_version_endpoint() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/version"
        return httpx.Response(200, json={"version": "0.26.0"})

    async def probe() -> str:
        async with client_for(handler) as client:
            return await adapter_for(deployment("vllm")).version(client, "http://127.0.0.1:1")

    assert run(probe()) == "vllm 0.26.0"


# ----------------------------------------------------------------------------------------------- SGLang
def test_sglang_argv_maps_the_equivalent_flags_and_enables_metrics() -> None:
    d = deployment("sglang", engine={
        "mem_fraction_static": 0.25, "context_length": 1536, "max_running_requests": 24, "dtype": "float16",
        "extra_args": ["--log-level", "warning"],
    })
    argv = adapter_for(d).launch(d, 30001, "Qwen/Qwen2.5-3B-Instruct").argv
    assert_plain_argv(argv)
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    assert flag_value(argv, "--model-path") == "Qwen/Qwen2.5-3B-Instruct"
    assert flag_value(argv, "--host") == "127.0.0.1"
    assert flag_value(argv, "--port") == "30001"
    assert flag_value(argv, "--served-model-name") == "sglang-test"
    assert flag_value(argv, "--mem-fraction-static") == "0.25"
    assert flag_value(argv, "--context-length") == "1536"
    assert flag_value(argv, "--max-running-requests") == "24"
    assert flag_value(argv, "--dtype") == "float16"
    assert "--enable-metrics" in argv
    assert argv[-2:] == ["--log-level", "warning"]


def test_sglang_serves_a_shape_with_dummy_weights() -> None:
    d = deployment("sglang", shape="qwen2.5-3b")
    assert flag_value(adapter_for(d).launch(d, 1, "/s").argv, "--load-format") == "dummy"


def test_sglang_version_falls_back_to_get_server_info() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/get_server_info":
            return httpx.Response(200, json={"version": "0.5.5", "mem_fraction_static": 0.25})
        return httpx.Response(404)

    async def probe() -> str:
        async with client_for(handler) as client:
            return await adapter_for(deployment("sglang")).version(client, "http://127.0.0.1:1")

    assert run(probe()) == "sglang 0.5.5"
    assert seen == ["/server_info", "/get_server_info"]


def test_version_probe_says_unknown_when_the_server_does_not_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def probe(kind: str) -> str:
        async with client_for(handler) as client:
            return await adapter_for(deployment(kind, model="x")).version(client, "http://127.0.0.1:1")

    assert [run(probe(kind)) for kind in ("vllm", "sglang", "ollama")] == ["unknown"] * 3


# ----------------------------------------------------------------------------------------------- Ollama
def test_ollama_runs_ollama_serve_configured_through_its_environment() -> None:
    d = deployment("ollama", model="qwen2.5:3b", engine={
        "num_ctx": 1536, "num_parallel": 24, "keep_alive": "-1", "binary": "/usr/local/bin/ollama",
    })
    adapter = adapter_for(d)
    spec = adapter.launch(d, 8022, d.model)
    assert_plain_argv(spec.argv)
    assert spec.argv == ["/usr/local/bin/ollama", "serve"]
    assert spec.env == {
        "OLLAMA_HOST": "127.0.0.1:8022",
        "OLLAMA_NUM_PARALLEL": "24",
        "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_CONTEXT_LENGTH": "1536",
    }
    assert adapter.served_model_name(d) == "qwen2.5:3b"


def test_ollama_refuses_a_shape_model() -> None:
    d = deployment("ollama", model="qwen2.5:3b", shape="qwen2.5-3b")
    with pytest.raises(ParamsError, match="vllm or sglang"):
        adapter_for(d).launch(d, 1, "x")


@pytest.mark.parametrize(("written", "sent"), [("-1", -1), ("0", 0), ("300", 300), ("5m", "5m"), ("1.5h", "1.5h")])
def test_ollama_keep_alive_is_sent_as_a_number_or_a_duration(written: str, sent: str | int) -> None:
    assert keep_alive_value(written) == sent


class FakeOllama:
    """Just enough of Ollama's API for the pull-and-load step; records every call."""

    def __init__(self, has_model: bool, pull_status: int = 200, load_status: int = 200) -> None:
        self.has_model, self.pull_status, self.load_status = has_model, pull_status, load_status
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        self.calls.append((request.url.path, body))
        if request.url.path == "/api/show":
            return httpx.Response(200 if self.has_model else 404, json={})
        if request.url.path == "/api/pull":
            self.has_model = self.pull_status == 200
            return httpx.Response(self.pull_status, json={"status": "success"})
        if request.url.path == "/api/generate":
            return httpx.Response(self.load_status, json={"done": True, "done_reason": "load"})
        return httpx.Response(404)


def after_ready(fake: FakeOllama, d: Deployment) -> None:
    async def go() -> None:
        async with client_for(fake) as client:
            await OllamaAdapter().after_ready(client, "http://127.0.0.1:8021", d)

    run(go())


def test_ollama_after_ready_pulls_a_missing_tag_then_loads_it_with_an_empty_prompt() -> None:
    fake = FakeOllama(has_model=False)
    after_ready(fake, deployment("ollama", model="tinyllama:1.1b", engine={"keep_alive": "-1"}))
    assert [path for path, _ in fake.calls] == ["/api/show", "/api/pull", "/api/generate"]
    assert fake.calls[1][1] == {"model": "tinyllama:1.1b", "stream": False}
    assert fake.calls[2][1] == {"model": "tinyllama:1.1b", "prompt": "", "keep_alive": -1}


def test_ollama_after_ready_does_not_pull_a_tag_it_has() -> None:
    fake = FakeOllama(has_model=True)
    after_ready(fake, deployment("ollama", model="yi:6b", engine={"keep_alive": "30m"}))
    assert [path for path, _ in fake.calls] == ["/api/show", "/api/generate"]
    assert fake.calls[1][1]["keep_alive"] == "30m"


def test_ollama_after_ready_raises_engine_error_naming_the_tag_when_pull_fails() -> None:
    with pytest.raises(EngineError, match=r"could not pull 'nope:1b'.*ollama pull nope:1b"):
        after_ready(FakeOllama(has_model=False, pull_status=500), deployment("ollama", model="nope:1b"))


def test_ollama_after_ready_raises_engine_error_when_load_fails() -> None:
    with pytest.raises(EngineError, match="did not load 'yi:6b'"):
        after_ready(FakeOllama(has_model=True, load_status=500), deployment("ollama", model="yi:6b"))


def test_ollama_version_probe() -> None:
    async def probe() -> str:
        handler = lambda request: httpx.Response(200, json={"version": "0.12.6"})  # noqa: E731
        async with client_for(handler) as client:
            return await OllamaAdapter().version(client, "http://127.0.0.1:1")

    assert run(probe()) == "ollama 0.12.6"


def test_default_after_ready_does_nothing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request expected, got {request.url}")

    async def go() -> None:
        async with client_for(handler) as client:
            await adapter_for(deployment("vllm")).after_ready(client, "http://127.0.0.1:1", deployment("vllm"))

    run(go())


# ----------------------------------------------------------------------------------------------- compose services
@pytest.mark.parametrize(("kind", "port"), [("vllm", 8000), ("sglang", 30000), ("ollama", 11434)])
def test_compose_service_binds_loopback_reserves_the_gpu_and_checks_health(kind: str, port: int) -> None:
    d = deployment(kind, model="qwen2.5:3b" if kind == "ollama" else "Qwen/Qwen2.5-3B-Instruct")
    service = adapter_for(d).compose_service(d, 8123)
    assert service["ports"] == [f"127.0.0.1:8123:{port}"]
    assert service["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    assert service["healthcheck"]["test"][0] == "CMD"
    assert all(isinstance(part, str) for part in service["command"])
    assert "depends_on" not in service


def test_compose_services_listen_on_all_container_interfaces_only_inside_the_container() -> None:
    d = deployment("vllm")
    command = adapter_for(d).compose_service(d, 8001)["command"]
    assert flag_value(command, "--host") == "0.0.0.0" and flag_value(command, "--port") == "8000"
    o = deployment("ollama", model="yi:6b")
    assert adapter_for(o).compose_service(o, 8021)["environment"]["OLLAMA_HOST"] == "0.0.0.0:11434"


# ----------------------------------------------------------------------------------------------- llama.cpp
def llamacpp(tmp_path: Any, **engine: Any) -> Deployment:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return deployment("llamacpp", model="TinyLlama/TinyLlama-1.1B-Chat-v1.0", shape="tinyllama-1.1b",
                      engine={"binary": str(binary), **engine})


def test_llamacpp_runs_the_given_binary_with_every_layer_on_the_gpu(tmp_path: Any) -> None:
    d = llamacpp(tmp_path, gpu_layers="all", parallel_slots=128, ctx_size=65536, extra_args=["--flash-attn", "on"])
    argv = adapter_for(d).launch(d, 8123, "/cache/tinyllama-1.1b-f16.gguf").argv
    assert_plain_argv(argv)
    assert argv[0] == str(tmp_path / "llama-server")
    assert flag_value(argv, "--model") == "/cache/tinyllama-1.1b-f16.gguf"
    assert flag_value(argv, "--n-gpu-layers") == "all"
    assert (flag_value(argv, "--parallel"), flag_value(argv, "--ctx-size")) == ("128", "65536")
    assert "--cont-batching" in argv and argv[-2:] == ["--flash-attn", "on"]


def test_llamacpp_passes_no_layer_flag_unless_told(tmp_path: Any) -> None:
    d = llamacpp(tmp_path)
    assert "--n-gpu-layers" not in adapter_for(d).launch(d, 8123, "m.gguf").argv
    numbered = llamacpp(tmp_path, gpu_layers=12)
    assert flag_value(adapter_for(numbered).launch(numbered, 8123, "m.gguf").argv, "--n-gpu-layers") == "12"


def test_llamacpp_serves_a_shape_as_a_gguf_mounted_in_compose(tmp_path: Any) -> None:
    d = llamacpp(tmp_path, gpu_layers="all")
    adapter_for(d).check_shape(d)
    service = adapter_for(d).compose_service(d, 8123)
    assert flag_value(service["command"], "--model") == "/shapes/tinyllama-1.1b-f16.gguf"
    assert "./shapes/tinyllama-1.1b-f16.gguf:/shapes/tinyllama-1.1b-f16.gguf:ro" in service["volumes"]
    assert flag_value(service["command"], "--n-gpu-layers") == "all"


def test_llamacpp_on_the_gpu_is_predicted_in_gpu_memory_and_starts_by_model_size(tmp_path: Any) -> None:
    from servelab.serve.engines.llamacpp import LLAMACPP_GPU_OVERHEAD_MIB

    on_gpu, on_cpu = llamacpp(tmp_path, gpu_layers="all", ctx_size=65536), llamacpp(tmp_path)
    footprint = adapter_for(on_gpu).footprint(on_gpu, 143_771, 143_771)
    assert footprint.memory == "gpu" and footprint.overhead_mib == LLAMACPP_GPU_OVERHEAD_MIB
    # f16 weights of 1,100,048,384 parameters; 22 layers x 4 KV heads x 64 x 2 x 2 bytes = 22,528 bytes per token
    assert footprint.weights_mib == pytest.approx(1_100_048_384 * 2 / 2**20)
    assert footprint.kv_cache_mib == pytest.approx(65536 * 22_528 / 2**20)
    assert adapter_for(on_cpu).footprint(on_cpu, 143_771, 143_771).memory == "host"
    assert adapter_for(on_cpu).start_order_key(on_cpu) == (0.0, 0.0)
    assert adapter_for(on_gpu).start_order_key(on_gpu) == (0.0, pytest.approx(1.100048384))
