"""A real `servelab run` whose every request is refused: the real llama-server guarded by an API key that only
the run's `.env` holds, so every request the client sends (without the key) is answered 401.

One run pins down four things: a run whose error rate passes policy.max_error_rate exits non-zero and says why
at the top of its report and in manifest.json; `.env` is read for a native run and reaches the engine (without
it the server would have no key and every request would succeed); every value named in secret_env or found in
`.env` is redacted by value from every file the run writes, whatever its name; and the run's copy of the params
file keeps no comment (where a pasted key may hide).
"""

from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fault_harness import PYTHON, REPO
from fixtures_run import write_params
from servelab.records import REQUESTS_FILE, read_jsonl
from servelab.secrets import REDACTED
from servelab.serve.engines.llamacpp import default_binary

pytestmark = [pytest.mark.engine, pytest.mark.slow]
ALPHABET = string.ascii_letters + string.digits
LEAKY_ENGINE = """#!/bin/sh
# The real llama-server, behind a start-up line that prints what it was given, as careless engines do.
echo "engine environment: LLAMA_API_KEY=$LLAMA_API_KEY SERVELAB_PROBE_ACCESS=$SERVELAB_PROBE_ACCESS"
exec {binary} "$@"
"""


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


@dataclass
class RefusedRun:
    run_dir: Path
    outputs: Path
    completed: subprocess.CompletedProcess[str]
    values: dict[str, str]
    """What must appear in no file: the .env key, the secret_env value, the key in a params comment."""


@pytest.fixture(scope="module")
def refused_run(tmp_path_factory: pytest.TempPathFactory) -> RefusedRun:
    folder = tmp_path_factory.mktemp("refused")
    values = {"api key from .env": _random(32), "secret_env value": _random(24), "key in a comment": _random(28)}
    (folder / ".env").write_text(
        f"# what the README says to do with secrets\nLLAMA_API_KEY={values['api key from .env']}\n"
        f"export SERVELAB_PROBE_ACCESS=\"{values['secret_env value']}\"\n"
    )
    leaky_engine = folder / "leaky-llama-server"
    leaky_engine.write_text(LEAKY_ENGINE.format(binary=default_binary()))
    leaky_engine.chmod(0o755)
    params_path = write_params(folder, name="refused", languages=["en"], load=[{"kind": "concurrency", "values": [2]}])
    data = yaml.safe_load(params_path.read_text())
    data["deployments"][0]["secret_env"] = ["LLAMA_API_KEY", "SERVELAB_PROBE_ACCESS"]
    data["deployments"][0]["engine"]["binary"] = str(leaky_engine)
    params_path.write_text(f"# first try, with the key pasted here: {values['key in a comment']}\n" + yaml.safe_dump(data, sort_keys=False))
    environment = {k: v for k, v in os.environ.items() if k not in ("LLAMA_API_KEY", "SERVELAB_PROBE_ACCESS")}
    environment["PYTHONPATH"] = str(REPO / "lib")
    outputs = folder / "outputs"
    completed = subprocess.run(
        [PYTHON, "-m", "servelab.cli", "run", params_path.name, "--outputs", str(outputs)],
        cwd=folder, env=environment, capture_output=True, text=True, timeout=600, check=False,
    )
    runs = [p for p in outputs.glob("*/") if (p / "manifest.json").exists()]
    assert len(runs) == 1, completed.stderr[-3000:]
    return RefusedRun(runs[0], outputs, completed, values)


def test_a_run_whose_every_request_is_refused_with_401_exits_non_zero_and_says_why(refused_run):
    """Expectation: every measured request is a record of class http_4xx with status 401 (the key from .env
    reached the engine); `servelab run` still writes its report, then exits 1 with one line saying the run failed,
    how many requests failed and the policy it passed; manifest.json's `outcome` says the same, and the report
    opens with it."""
    completed = refused_run.completed
    records = [r for r in read_jsonl(refused_run.run_dir / REQUESTS_FILE) if not r["warmup"]]
    assert len(records) == 4
    assert {(r["error_class"], r["http_status"]) for r in records} == {("http_4xx", 401)}
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert "servelab: the run failed: 4 of 4 measured requests failed (100%), above policy.max_error_rate 0.5" in completed.stderr
    assert "Traceback" not in completed.stderr
    outcome = json.loads((refused_run.run_dir / "manifest.json").read_text())["outcome"]
    assert (outcome["status"], outcome["requests"], outcome["errors"]) == ("failed", 4, 4)
    assert outcome["failed_points"] == ["smollm2/en/concurrency-2"]
    report = (refused_run.run_dir / "report.html").read_text()
    body = report[report.index("<body"):]
    assert body.index('id="run-outcome"') < body.index("<h1")
    assert "This run FAILED: 4 of 4 measured requests failed" in report


def test_secret_env_and_dotenv_values_are_redacted_by_value_from_every_file_the_run_writes(refused_run):
    """Expectation: neither the .env key (LLAMA_API_KEY) nor the value of SERVELAB_PROBE_ACCESS, a secret_env name
    that looks like no secret, is in any file under outputs/ (the engine printed both into its log, which now
    shows them redacted), nor on the console; the run's params.yaml is the data without its comment, so the key
    pasted in the comment is gone too."""
    scanned = [path for path in refused_run.outputs.rglob("*") if path.is_file()]
    assert len(scanned) >= 10 and any(p.suffix == ".log" for p in scanned)
    for what, value in refused_run.values.items():
        leaks = [str(path) for path in scanned if value.encode() in path.read_bytes()]
        assert not leaks, f"the {what} leaked into {leaks}"
        assert value not in refused_run.completed.stdout + refused_run.completed.stderr
    engine_log = (refused_run.run_dir / "logs" / "smollm2.log").read_text(errors="replace")
    assert f"engine environment: LLAMA_API_KEY={REDACTED} SERVELAB_PROBE_ACCESS={REDACTED}" in engine_log
    copy = (refused_run.run_dir / "params.yaml").read_text()
    assert "#" not in copy
    assert yaml.safe_load(copy)["deployments"][0]["secret_env"] == ["LLAMA_API_KEY", "SERVELAB_PROBE_ACCESS"]
