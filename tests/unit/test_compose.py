"""Generated compose files: structure (profiles, start chain, GPU, health, volumes), loopback-only ports, pinned
images, no secret values, committed files equal to the generator's output, and `docker compose config`
where the compose plugin exists."""

from __future__ import annotations

import shutil
import subprocess
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml
from servelab.errors import ParamsError
from servelab.params import Params, load_params, parse_params
from servelab.serve.compose import (
    check_image_pinned,
    compose_document,
    host_ports,
    render_compose,
    start_order,
    write_compose,
)

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "params" / "seed-rtx5090.yaml"
FAKE_SECRET = "hf_" + "servelabFAKEsecret0123456789abcdef"  # built, so no token-shaped literal is committed
SWEEP = {"load": [{"kind": "concurrency", "values": [1]}]}


def make_params(*deployments: dict[str, Any], name: str = "t") -> Params:
    return parse_params({"name": name, "deployments": list(deployments), "sweep": SWEEP}, "<test>")


def vllm(name: str, utilization: float, **fields: Any) -> dict[str, Any]:
    engine = {"kind": "vllm", "gpu_memory_utilization": utilization, **fields.pop("engine", {})}
    return {"name": name, "model": fields.pop("model", f"org/{name}"), "engine": engine, **fields}


def committed_compose_files() -> list[Path]:
    return sorted((REPO / "compose").glob("*.yaml"))


@pytest.fixture(scope="module")
def seed() -> Params:
    return load_params(SEED)


@pytest.fixture(scope="module")
def seed_document(seed: Params) -> dict[str, Any]:
    return compose_document(seed)


# ----------------------------------------------------------------------------------------------- the seed
def test_seed_params_validate_and_hold_three_models_per_framework(seed: Params) -> None:
    kinds = [d.engine.kind for d in seed.deployments]
    assert sorted(kinds) == ["ollama"] * 3 + ["sglang"] * 3 + ["vllm"] * 3
    assert seed.sweep.languages == ("en", "ko", "zh")
    vllm_engines = {d.model: d.engine for d in seed.deployments if d.engine.kind == "vllm"}
    assert [(e.gpu_memory_utilization, e.max_model_len, e.max_num_seqs) for e in vllm_engines.values()] == [
        (0.15, 1024, 32), (0.25, 1536, 24), (0.50, 2048, 16)
    ]
    assert {d.model for d in seed.deployments if d.engine.kind == "ollama"} == {"tinyllama:1.1b", "qwen2.5:3b", "yi:6b"}


def test_one_service_per_deployment_each_in_its_frameworks_profile(seed: Params, seed_document: dict[str, Any]) -> None:
    services = seed_document["services"]
    assert set(services) == {d.name for d in seed.deployments}
    for deployment in seed.deployments:
        assert services[deployment.name]["profiles"] == [deployment.engine.kind]


def test_each_profile_starts_smallest_first_and_waits_for_health(seed_document: dict[str, Any]) -> None:
    services = seed_document["services"]
    for framework in ("vllm", "sglang", "ollama"):
        chain = [f"{framework}-tinyllama", f"{framework}-qwen", f"{framework}-yi"]
        assert "depends_on" not in services[chain[0]]
        for before, after in pairwise(chain):
            assert services[after]["depends_on"] == {before: {"condition": "service_healthy"}}


def test_no_service_depends_on_another_profile(seed_document: dict[str, Any]) -> None:
    services = seed_document["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert services[dependency]["profiles"] == service["profiles"], name


def test_every_service_reserves_the_gpu_and_has_a_healthcheck(seed_document: dict[str, Any]) -> None:
    for name, service in seed_document["services"].items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}], name
        check = service["healthcheck"]
        assert check["test"][0] == "CMD" and check["interval"] and check["start_period"] == "600s", name


def test_named_volumes_are_declared_and_hold_the_model_caches(seed_document: dict[str, Any]) -> None:
    assert seed_document["volumes"] == {"model-cache": {}, "ollama-models": {}}
    for name, service in seed_document["services"].items():
        expected = "ollama-models:/root/.ollama" if name.startswith("ollama") else "model-cache:/root/.cache"
        assert service["volumes"] == [expected]


def test_seed_ports_are_the_params_ports(seed: Params, seed_document: dict[str, Any]) -> None:
    for deployment in seed.deployments:
        host_port = seed_document["services"][deployment.name]["ports"][0].split(":")[1]
        assert int(host_port) == deployment.port


# ----------------------------------------------------------------------------------------------- safety
def published_ports(document: dict[str, Any]) -> list[str]:
    return [port for service in document["services"].values() for port in service.get("ports", [])]


@pytest.mark.parametrize("path", committed_compose_files(), ids=lambda p: p.name)
def test_every_committed_port_binds_127_0_0_1(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    ports = published_ports(document)
    assert ports
    for port in ports:
        assert isinstance(port, str) and port.startswith("127.0.0.1:"), port
        assert len(port.split(":")) == 3, port
    for service in document["services"].values():
        assert "network_mode" not in service, "host networking would bypass the loopback binding"


def test_generated_ports_bind_loopback_also_when_the_params_name_none() -> None:
    params = make_params(vllm("a", 0.2), vllm("b", 0.3, port=8001), vllm("c", 0.4))
    assert host_ports(params) == {"a": 8002, "b": 8001, "c": 8003}
    assert all(port.startswith("127.0.0.1:") for port in published_ports(compose_document(params)))


@pytest.mark.parametrize("image", ["vllm/vllm-openai", "vllm/vllm-openai:latest", "localhost:5000/vllm"])
def test_images_without_a_pinned_tag_are_refused(image: str) -> None:
    params = make_params(vllm("a", 0.2, engine={"image": image}))
    with pytest.raises(ParamsError, match=r"deployments\[0\]\.engine\.image"):
        compose_document(params)


@pytest.mark.parametrize(
    "image", ["vllm/vllm-openai:v0.26.0", "localhost:5000/vllm:1.2", "ollama/ollama@sha256:" + "a" * 64]
)
def test_pinned_tags_and_digests_are_accepted(image: str) -> None:
    check_image_pinned(image, "image")


@pytest.mark.parametrize("path", committed_compose_files(), ids=lambda p: p.name)
def test_committed_images_are_pinned(path: Path) -> None:
    for name, service in yaml.safe_load(path.read_text())["services"].items():
        check_image_pinned(service["image"], f"{path.name}: {name}")


def test_secrets_appear_only_as_references_never_as_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_TOKEN", FAKE_SECRET)
    monkeypatch.setenv("SERVELAB_FAKE_API_KEY", FAKE_SECRET)
    params = make_params(
        vllm("a", 0.2, secret_env=["HF_TOKEN"], env={"VLLM_LOGGING_LEVEL": "INFO"}),
        vllm("b", 0.3, secret_env=["HF_TOKEN", "SERVELAB_FAKE_API_KEY"], shape="tinyllama-1.1b"),
        {"name": "c", "model": "yi:6b", "engine": {"kind": "ollama"}, "secret_env": ["SERVELAB_FAKE_API_KEY"]},
    )
    written = write_compose(params, tmp_path / "params" / "secret-test.yaml", tmp_path / "compose")
    environment = yaml.safe_load(written.read_text())["services"]["b"]["environment"]
    assert environment["HF_TOKEN"] == "${HF_TOKEN}"
    assert environment["SERVELAB_FAKE_API_KEY"] == "${SERVELAB_FAKE_API_KEY}"
    scanned = [p for p in (tmp_path / "compose").rglob("*") if p.is_file()]
    assert written in scanned and len(scanned) > 1
    for path in scanned:
        assert FAKE_SECRET.encode() not in path.read_bytes(), path


def test_plain_env_is_written_and_dollars_are_escaped_for_compose() -> None:
    params = make_params(
        vllm("a", 0.2, env={"PRICE": "$5"}, engine={"extra_args": ["--chat-template-content-format", "$x"]}),
    )
    service = compose_document(params)["services"]["a"]
    assert service["environment"] == {"PRICE": "$$5"}
    assert service["command"][-1] == "$$x"


# ----------------------------------------------------------------------------------------------- order and shapes
def test_start_order_is_by_memory_fraction_then_size_then_params_order() -> None:
    params = make_params(
        vllm("big", 0.5), vllm("small", 0.15), vllm("mid-7b", 0.25, model="x/Model-7B"),
        vllm("mid-3b", 0.25, model="x/Model-3B"), vllm("mid-unknown", 0.25, model="x/Model"),
    )
    assert [d.name for d in start_order(list(params.deployments))] == ["small", "mid-3b", "mid-7b", "mid-unknown", "big"]


def test_ollama_starts_by_model_size() -> None:
    params = make_params(*(
        {"name": n, "model": m, "engine": {"kind": "ollama"}} for n, m in (("y", "yi:6b"), ("t", "tinyllama:1.1b"))
    ))
    assert compose_document(params)["services"]["y"]["depends_on"] == {"t": {"condition": "service_healthy"}}


def test_shape_services_mount_the_folder_and_load_dummy_weights(tmp_path: Path) -> None:
    params = make_params(vllm("a", 0.2, shape="qwen2.5-3b"), {
        "name": "s", "model": "m", "shape": "yi-6b", "engine": {"kind": "sglang", "mem_fraction_static": 0.5},
    })
    services = compose_document(params)["services"]
    assert "./shapes/qwen2.5-3b:/shapes/qwen2.5-3b:ro" in services["a"]["volumes"]
    assert services["a"]["command"][0] == "/shapes/qwen2.5-3b"
    assert services["a"]["command"][-2:] == ["--load-format", "dummy"]
    assert services["s"]["command"][services["s"]["command"].index("--model-path") + 1] == "/shapes/yi-6b"
    out = tmp_path / "compose"
    write_compose(params, "params/shapes.yaml", out)
    assert (out / "shapes" / "qwen2.5-3b" / "tokenizer.json").is_file()
    assert (out / "shapes" / "yi-6b" / "config.json").is_file()


def test_a_shape_on_ollama_is_refused() -> None:
    params = make_params({"name": "o", "model": "yi:6b", "shape": "yi-6b", "engine": {"kind": "ollama"}})
    with pytest.raises(ParamsError, match="ollama cannot serve shape"):
        compose_document(params)


# ----------------------------------------------------------------------------------------------- committed files
def test_seed_compose_file_is_committed() -> None:
    assert (REPO / "compose" / "seed-rtx5090.yaml").is_file()


@pytest.mark.parametrize("path", committed_compose_files(), ids=lambda p: p.name)
def test_committed_compose_file_equals_the_generators_output(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params_path = Path("params") / f"{path.stem}.yaml"
    monkeypatch.chdir(REPO)
    assert params_path.is_file(), f"{path} has no params/{path.stem}.yaml to be generated from"
    expected = render_compose(load_params(params_path), params_path)
    assert path.read_text(encoding="utf-8") == expected, (
        f"{path.relative_to(REPO)} differs from the generator's output; do not edit it by hand, "
        f"regenerate it: servelab compose {params_path}"
    )


def test_generated_text_names_its_source_and_says_not_to_edit(seed: Params) -> None:
    text = render_compose(seed, "params/seed-rtx5090.yaml")
    assert text.startswith("# Generated by servelab.serve.compose from params/seed-rtx5090.yaml; do not edit.")
    assert "latest" not in text and "&id" not in text and "*id" not in text


# ----------------------------------------------------------------------------------------------- docker compose
def compose_checker() -> list[str]:
    """The command that checks a compose file here: `docker compose` (v2) if the plugin is installed, else
    docker-compose 1.29, which `make test` installs from Debian (scripts/install-compose-checker.sh)."""
    try:
        if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False).returncode == 0:
            return ["docker", "compose"]
    except (OSError, subprocess.TimeoutExpired):
        pass
    found = shutil.which("docker-compose")
    assert found, "no compose checker: run `make test` (it installs one) or `bash scripts/install-compose-checker.sh`"
    return [found]


def check_compose(document: dict, tmp_path: Path, profile: str) -> subprocess.CompletedProcess[str]:
    """`config -q` on `document`. docker-compose 1.29 predates the top-level `name` of the Compose Specification,
    so for it that one key is dropped; every other key is checked against its schema."""
    checker = compose_checker()
    if checker != ["docker", "compose"]:
        document = {k: v for k, v in document.items() if k != "name"}
    path = tmp_path / f"checked-{profile}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return subprocess.run(
        [*checker, "-f", str(path), "--profile", profile, "config", "-q"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )


@pytest.mark.parametrize("path", committed_compose_files(), ids=lambda p: p.name)
def test_the_compose_checker_accepts_the_committed_file_for_every_profile(path: Path, tmp_path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    profiles = sorted({p for s in document["services"].values() for p in s["profiles"]})
    assert profiles
    for profile in profiles:
        done = check_compose(document, tmp_path, profile)
        assert done.returncode == 0, f"{path.name} --profile {profile}: {done.stderr}"


def test_the_compose_checker_rejects_a_file_with_a_bad_key(tmp_path: Path) -> None:
    document = yaml.safe_load(committed_compose_files()[0].read_text())
    service = next(iter(document["services"].values()))
    service["healthcheck"]["retries"] = "three"
    service["restart_after_lunch"] = True
    done = check_compose(document, tmp_path, service["profiles"][0])
    assert done.returncode != 0 and ("restart_after_lunch" in done.stderr or "retries" in done.stderr)
