"""Servers servelab did not start, measured end to end: `servelab bench URL` against the reference emitter
(tools/emitter, a stand-in server with a known schedule), and `servelab run` on an endpoint params file against
the real llama-server, whose memory is found through its port."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from servelab.manifest import read_manifest
from servelab.params import load_params
from servelab.records import REQUESTS_FILE, read_jsonl
from servelab.run import run
from servelab.serve.deploy import RunningServer, stop_child

REPO = Path(__file__).resolve().parents[2]
EMITTER = REPO / "tools" / "emitter" / "emitter.py"


@contextlib.contextmanager
def reference_emitter() -> Iterator[tuple[str, int]]:
    """tools/emitter on a free loopback port; yields (URL, pid)."""
    process = subprocess.Popen(
        [sys.executable, str(EMITTER), "--port", "0", "--ttft-ms", "1", "--itl-ms", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = process.stdout.readline().strip()  # type: ignore[union-attr]
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, f"the emitter printed {line!r} first"
        yield match.group(1), process.pid
    finally:
        stop_child(process)


def html_text_of(markup: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", markup))


@pytest.mark.slow
def test_bench_cli_against_the_reference_emitter_writes_a_normal_run_folder(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    with reference_emitter() as (url, emitter_pid):
        completed = subprocess.run(
            [sys.executable, "-m", "servelab.cli", "bench", url, "--model", "servelab-emitter", "--concurrency", "1", "4",
             "--output-tokens", "16", "--outputs", str(outputs), "--save-params", str(tmp_path / "bench.yaml")],
            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO / "lib")}, timeout=600,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert psutil.pid_exists(emitter_pid)  # nothing it did not start is stopped
    (run_dir,) = [path for path in outputs.iterdir() if path.is_dir()]
    assert (run_dir / "report.html").is_file()
    records = list(read_jsonl(run_dir / REQUESTS_FILE))
    measured = [r for r in records if not r["warmup"]]
    assert {r["deployment"] for r in records} == {"servelab-emitter"}
    assert len(measured) == 2 * 32 and all(r["error_class"] is None for r in measured)
    assert {r["output_tokens"] for r in measured} == {16}
    saved = load_params(tmp_path / "bench.yaml")
    assert saved.deployments[0].engine.kind == "endpoint" and saved.sweep.load[0].values == (1, 4)
    assert f"report: {run_dir / 'report.html'}" in completed.stdout
    engine = read_manifest(run_dir)["engines"]["servelab-emitter"]
    assert engine["started"] is False and engine["memory"].endswith(f"(pid {emitter_pid}) on port {url.rsplit(':', 1)[1]}")


@pytest.mark.engine
@pytest.mark.slow
def test_run_on_an_endpoint_params_file_finds_the_real_llama_server_through_its_port(
    embedded_server: RunningServer, tmp_path: Path
) -> None:
    """The llama-server the session fixture started is the endpoint: servelab starts nothing, attributes that
    server's process (found by its port) in the memory section, and leaves it running."""
    params_path = tmp_path / "endpoint-llamacpp.yaml"
    params_path.write_text(yaml.safe_dump({
        "name": "endpoint-llamacpp",
        "deployments": [{
            "name": "running-llama", "model": "smollm2",
            "engine": {"kind": "endpoint", "base_url": embedded_server.base_url, "api": "openai", "metrics": "llamacpp"},
            "startup_timeout_s": 30,
        }],
        "sweep": {"languages": ["en"], "input_tokens": 16, "output_tokens": 8, "requests_per_point": 3,
                  "warmup_requests": 1, "load": [{"kind": "concurrency", "values": [1]}], "request_timeout_s": 60},
    }))
    assert load_params(params_path).deployments[0].engine.kind == "endpoint"
    result = run(params_path, outputs_dir=tmp_path / "outputs")
    assert embedded_server.alive()
    server_name = psutil.Process(embedded_server.pid).name()
    found = f"{server_name} (pid {embedded_server.pid}) on port {embedded_server.port}"
    assert read_manifest(result.run_dir)["engines"]["running-llama"]["memory"] == found
    page = result.report.read_text()
    memory_html = page[page.index('id="memory"'):]
    memory_section = html_text_of(memory_html[:memory_html.index("</section>")])
    assert "running-llama" in memory_section and found in memory_section
    records = [r for r in read_jsonl(result.run_dir / REQUESTS_FILE) if not r["warmup"]]
    assert len(records) == 3 and all(r["error_class"] is None for r in records)
