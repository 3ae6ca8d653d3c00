"""No shell, and secrets only from the environment, redacted wherever servelab writes.

Covered elsewhere, not repeated here: compose ports bind 127.0.0.1 and committed images are pinned
(tests/unit/test_compose.py); a planted key in a real run's environment appears in no output file or console
(test_killed_run.py); no committed file holds a key or token (tests/test_no_committed_secrets.py).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json

import pytest
from fault_harness import REPO
from servelab.cli import main
from servelab.manifest import update_manifest, write_manifest
from servelab.params import FRAMEWORKS, Deployment
from servelab.secrets import REDACTED, redact_file
from servelab.serve.compose import check_image_pinned
from servelab.serve.engines import all_adapters

SHELL_RUNNERS = {
    ("os", "system"), ("os", "popen"), ("os", "spawnl"), ("os", "spawnlp"), ("os", "spawnv"), ("os", "spawnvp"),
    ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"), ("asyncio", "create_subprocess_shell"),
}
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}
FAKE_KEY = "hf_" + "FAKEk3yForServelabSecurityTests0123456"


def shell_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every place in `source` that runs a shell or builds a command line as a string: `shell=<anything but
    False>`, os.system/os.popen/os.spawn*, subprocess.getoutput, create_subprocess_shell, and subprocess calls
    whose command is an f-string, a concatenation, a % format or a .format() call."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        where = f"{filename}:{node.lineno}"
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                found.append(f"{where}: shell={ast.unparse(keyword.value)}")
        function = node.func
        if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name):
            name = (function.value.id, function.attr)
            if name in SHELL_RUNNERS:
                found.append(f"{where}: {name[0]}.{name[1]}()")
            if name[0] == "subprocess" and name[1] in SUBPROCESS_CALLS and node.args:
                command = node.args[0]
                built = isinstance(command, ast.JoinedStr | ast.BinOp) or (
                    isinstance(command, ast.Call) and isinstance(command.func, ast.Attribute) and command.func.attr == "format"
                )
                if built:
                    found.append(f"{where}: subprocess.{name[1]}() with a command built as a string")
    return found


def test_no_shell_is_ever_run_by_the_library_or_its_tools():
    """Expectation: no module of lib/servelab or tools/ runs a shell or builds a command line as a string; every
    process (engines, git, docker) is started from an argv list, so no params value can become shell syntax."""
    sources = sorted((REPO / "lib" / "servelab").rglob("*.py")) + sorted((REPO / "tools").rglob("*.py"))
    assert len(sources) > 30
    found = [use for path in sources for use in shell_uses(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "planted",
    [
        "import subprocess\nsubprocess.run('ls', shell=True)",
        "import subprocess\nsubprocess.Popen(argv, shell=flag)",
        "import os\nos.system('rm -rf ' + path)",
        "import os\nos.popen(command).read()",
        "import subprocess\nsubprocess.check_output(f'llama-server --model {model}')",
        "import subprocess\nsubprocess.run('vllm serve %s' % model)",
        "import subprocess\nsubprocess.call('{} --port {}'.format(binary, port))",
        "import asyncio\nasyncio.create_subprocess_shell(command)",
    ],
)
def test_the_shell_scanner_finds_planted_shell_uses(planted):
    """Expectation: each planted shell use is reported (so the scan above can fail)."""
    assert shell_uses(planted)


def test_the_shell_scanner_accepts_argv_lists():
    """Expectation: argv lists, shell=False and unrelated .format() calls are not reported."""
    assert not shell_uses("import subprocess\nsubprocess.run([binary, '--port', str(port)], shell=False, check=True)")
    assert not shell_uses("import subprocess\nsubprocess.Popen(spec.argv)\nlabel = '{}'.format(name)")


def _cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def _params_text(deployment_extra: str, engine: str = "{kind: llamacpp}") -> str:
    return (
        f"name: t\ndeployments:\n  - name: a\n    model: smollm2\n    engine: {engine}\n"
        f"{deployment_extra}sweep:\n  load: [{{kind: concurrency, values: [1]}}]\n"
    )


@pytest.mark.parametrize(
    ("extra", "engine"),
    [
        pytest.param(f"    env: {{HF_TOKEN: {FAKE_KEY}}}\n", "{kind: llamacpp}", id="env-HF_TOKEN"),
        pytest.param(f"    env: {{OPENAI_API_KEY: {FAKE_KEY}}}\n", "{kind: llamacpp}", id="env-OPENAI_API_KEY"),
        pytest.param("", f"{{kind: llamacpp, extra_args: [--api-key, {FAKE_KEY}]}}", id="extra_args"),
        pytest.param(f"    shape: {FAKE_KEY}\n", "{kind: llamacpp}", id="shape"),
    ],
)
def test_an_api_key_written_into_params_is_refused_without_echoing_it(tmp_path, extra, engine):
    """Expectation: a key written into a params file (under a secret-looking env name, or as any value shaped
    like a key) is refused by `servelab validate` with exit 2 and a message pointing to secret_env, and the
    message does not repeat the key (error output ends up in CI logs)."""
    path = tmp_path / "leaky.yaml"
    path.write_text(_params_text(extra, engine))
    code, message = _cli("validate", str(path))
    assert code == 2 and message.startswith("servelab: ") and "secret_env" in message, message
    assert FAKE_KEY not in message and FAKE_KEY[:12] not in message


def test_the_manifest_and_executed_files_are_redacted_of_keys_from_the_environment(tmp_path, monkeypatch):
    """Expectation: with OPENAI_API_KEY in the environment, any place the key reaches the manifest (an engine's
    argv, say) is written as ***redacted***, and redact_file takes it out of a log or notebook in place."""
    key = "sk-" + "FAKE" + "x" * 40
    monkeypatch.setenv("OPENAI_API_KEY", key)
    write_manifest(tmp_path, {"run_id": "r"})
    update_manifest(tmp_path, engines={"a": {"argv": ["vllm", "serve", "--api-key", key]}})
    text = (tmp_path / "manifest.json").read_text()
    assert key not in text and json.loads(text)["engines"]["a"]["argv"][-1] == REDACTED
    log = tmp_path / "engine.log"
    log.write_text(f"starting with key {key}\n")
    assert redact_file(log) and log.read_text() == f"starting with key {REDACTED}\n"
    assert not redact_file(log)


@pytest.mark.parametrize("kind", [kind for kind in FRAMEWORKS if all_adapters()[kind].starts_server])
def test_every_default_engine_image_is_pinned(kind):
    """Expectation: the compose image each engine kind defaults to carries a version tag (never 'latest'), so
    a generated compose file rebuilds the same server; check_image_pinned raises otherwise."""
    deployment = Deployment.model_validate({"name": "a", "model": "m", "engine": {"kind": kind}})
    check_image_pinned(deployment.engine.image, f"the default {kind} image")
    assert ":" in deployment.engine.image.rsplit("/", 1)[-1]


def test_the_environment_is_read_only_where_it_is_meant_to_be():
    """Expectation: os.environ / os.getenv appear only in secrets (finding secret values to redact), deploy
    (handing the environment, keys included, to the engine process) and the llama.cpp adapter (SERVELAB_CACHE):
    keys pass from the environment to the engine and are never read into params, records or reports."""
    allowed = {"secrets.py", "deploy.py", "llamacpp.py"}
    readers = []
    for path in sorted((REPO / "lib" / "servelab").rglob("*.py")):
        if path.name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and getattr(node.value, "id", "") == "os":
                readers.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not readers, readers

