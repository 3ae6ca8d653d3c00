"""A real `servelab run`, with an API key planted in its environment, SIGKILLed in the middle of a load point and
then resumed: every point ends up on disk exactly once, and the key is in none of the files or the console.

(tests/integration/test_interrupt_and_death.py does the same with SIGINT, which lets the run clean up; SIGKILL
gives it no chance at all.)
"""

from __future__ import annotations

import collections
import os
import secrets
import signal
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from fault_harness import PYTHON, REPO, check_nothing_lost, lines, wait_for
from fixtures_run import write_params
from servelab.records import POINTS_FILE, REQUESTS_FILE, latest_points, read_jsonl
from servelab.secrets import REDACTED
from servelab.serve.engines.llamacpp import default_binary

pytestmark = [pytest.mark.engine, pytest.mark.slow]
TOKEN_ALPHABET = string.ascii_letters + string.digits
LEAKY_ENGINE = """#!/bin/sh
# The real llama-server, behind a start-up line that prints the key it was given, as careless engines do.
echo "engine environment: HF_TOKEN=$HF_TOKEN"
exec {binary} "$@"
"""


@dataclass
class KilledRun:
    run_dir: Path
    outputs: Path
    token: str
    console: str
    """stdout and stderr of both processes."""
    killed_in: str
    """The point that was running when the run was killed."""


def _second_point_underway(outputs: Path) -> str | None:
    runs = [p for p in outputs.glob("*/") if (p / "manifest.json").exists()]
    if not runs:
        return None
    marks = list(read_jsonl(runs[0] / POINTS_FILE))
    started = [m["point_id"] for m in marks if m["status"] == "started"]
    if not any(m["status"] != "started" for m in marks) or len(started) < 2:
        return None
    underway = sum(1 for r in read_jsonl(runs[0] / REQUESTS_FILE) if r["point_id"] == started[1])
    return started[1] if underway >= 2 else None


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> KilledRun:
    """Run the tiny params with HF_TOKEN set (and an engine that prints it to its log), SIGKILL `servelab run`
    once the second point has two records, wait until every process it started is gone, then `servelab run
    --resume` to completion."""
    folder = tmp_path_factory.mktemp("killed")
    params_path = write_params(folder, name="killed", requests_per_point=6)
    leaky_engine = folder / "leaky-llama-server"
    leaky_engine.write_text(LEAKY_ENGINE.format(binary=default_binary()))
    leaky_engine.chmod(0o755)
    data = yaml.safe_load(params_path.read_text())
    data["deployments"][0]["secret_env"] = ["HF_TOKEN"]
    data["deployments"][0]["engine"]["binary"] = str(leaky_engine)
    params_path.write_text(yaml.safe_dump(data, sort_keys=False))
    token = "hf_" + "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(37))
    environment = {**os.environ, "HF_TOKEN": token}
    outputs = folder / "outputs"
    command = [PYTHON, "-m", "servelab.cli", "run", str(params_path), "--outputs", str(outputs)]
    first = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _second_point_underway(outputs) is not None, "the second load point to be underway", 240)
        killed_in = _second_point_underway(outputs) or ""
        descendants = psutil.Process(first.pid).children(recursive=True)
        first.send_signal(signal.SIGKILL)
        first_out, first_err = first.communicate(timeout=60)
        _, alive = psutil.wait_procs(descendants, timeout=60)
        assert not alive, f"still running after `servelab run` was killed: {[p.pid for p in alive]}"
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    (run_dir,) = [p for p in outputs.glob("*/") if (p / "manifest.json").exists()]
    resumed = subprocess.run(
        [*command, "--resume", run_dir.name], cwd=REPO, env=environment, capture_output=True, text=True, timeout=600, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    console = "\n".join((first_out, first_err, resumed.stdout, resumed.stderr))
    return KilledRun(run_dir, outputs, token, console, killed_in)


def test_a_run_sigkilled_mid_point_then_resumed_records_every_point_exactly_once(killed_run):
    """Expectation: after SIGKILL in the middle of the second point and `--resume`, the run is complete: all four
    points are done, each with its 6 measured requests and 1 warm-up on disk exactly once (the killed point's
    partial records were dropped and it ran again), and the report exists."""
    run_dir = killed_run.run_dir
    points = latest_points(run_dir)
    assert killed_run.killed_in in points
    assert sorted(points) == sorted(f"smollm2/{lang}/concurrency-{c}" for lang in ("en", "ko") for c in (1, 2))
    assert {p.status for p in points.values()} == {"done"}
    per_point = collections.Counter(r["point_id"] for r in read_jsonl(run_dir / REQUESTS_FILE) if not r["warmup"])
    assert set(per_point.values()) == {6}
    assert check_nothing_lost(run_dir, warmup_requests=1) == lines(run_dir / REQUESTS_FILE) == 4 * 7
    assert (run_dir / "report.html").stat().st_size > 0


def test_a_planted_api_key_appears_in_no_output_file_and_not_on_the_console(killed_run):
    """Expectation: HF_TOKEN (a fresh random 40-character hf_ token) reached the engine through secret_env, and
    the engine printed it to its log, yet no file the run wrote holds it: not the manifest, params copy, JSONL,
    CSVs, the engine log (redacted when the engine stops), the executed notebooks (.ipynb and their HTML),
    report.html or outputs/index.html; nor does the console."""
    scanned = [path for path in killed_run.outputs.rglob("*") if path.is_file()]
    assert len(scanned) >= 15 and any(p.suffix == ".ipynb" for p in scanned) and any(p.suffix == ".log" for p in scanned)
    leaks = [str(path) for path in scanned if killed_run.token.encode() in path.read_bytes()]
    assert not leaks, f"the API key leaked into {leaks}"
    assert killed_run.token not in killed_run.console
    engine_log = (killed_run.run_dir / "logs" / "smollm2.log").read_text(errors="replace")
    assert engine_log.count(f"engine environment: HF_TOKEN={REDACTED}") == 2  # the killed start and the resumed one
    manifest = yaml.safe_load((killed_run.run_dir / "manifest.json").read_text())
    assert manifest["params"]["deployments"][0]["secret_env"] == ["HF_TOKEN"]
