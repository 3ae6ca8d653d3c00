"""Secrets: which names and values look secret, and how every file a run writes is cleaned of them."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

SECRET_WORDS = r"TOKEN|KEY|APIKEY|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIALS?|AUTH"
SECRET_KEY = re.compile(rf"(?:^|[^A-Z0-9])(?:{SECRET_WORDS})(?:$|[^A-Z0-9])", re.IGNORECASE)
"""Names of settings and environment variables that hold secrets (HF_TOKEN, OPENAI_API_KEY, api-key): refused in
params, redacted in outputs. Whole words only, so that input_tokens and max_tokens are not secrets."""
SECRET_FLAG = re.compile(rf"^-{{1,2}}(?:[A-Z0-9]+[-_])*(?:{SECRET_WORDS})(?:$|=)", re.IGNORECASE)
"""Command-line flags that pass a secret: --api-key, --token, --hf-token=..., --password."""
SECRET_VALUE = re.compile(
    r"hf_[A-Za-z0-9]{30,}|sk-(?:proj-)?[A-Za-z0-9_-]{30,}|(?:AKIA|ASIA)[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
"""Values shaped like API keys (Hugging Face, OpenAI, AWS) or private keys: never welcome in a params file."""

REDACTED = "***redacted***"


SECRET_NAMES_VARIABLE = "SERVELAB_SECRET_NAMES"
"""Set by `use_run_secrets` for the run's process and every process it starts (notebook kernels, engines): the
names, beyond the secret-looking ones, whose values are secrets (each deployment's secret_env, every .env name)."""
MIN_SECRET_CHARS = 8
"""Shorter values are not redacted: replacing "1" or "true" everywhere would garble every file, and keys are longer."""
TEXT_SUFFIXES = frozenset({".json", ".jsonl", ".csv", ".yaml", ".yml", ".log", ".ipynb", ".html", ".txt", ".md", ".out", ".err"})
"""Files of a run folder that `redact_tree` cleans; binary files (parquet, png) would be corrupted by a text replace."""


def secret_values() -> list[str]:
    """Values of environment variables whose names look secret (HF_TOKEN, OPENAI_API_KEY, ...) or are named secret
    by the run (`use_run_secrets`: secret_env and .env), longest first."""
    named = set(filter(None, os.environ.get(SECRET_NAMES_VARIABLE, "").split(",")))
    values = [
        value
        for name, value in os.environ.items()
        if (name in named or SECRET_KEY.search(name)) and len(value) >= MIN_SECRET_CHARS and name != SECRET_NAMES_VARIABLE
    ]
    return sorted(set(values), key=len, reverse=True)


def read_dotenv(path: Path) -> dict[str, str]:
    """`NAME=value` lines of a .env file (`export ` and quotes allowed, `#` comments skipped); {} when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        return {}
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            values[name.strip()] = value
    return values


def use_run_secrets(secret_env: Iterable[str], dotenv: Path | None) -> list[str]:
    """Once, at the face of a run (`servelab run`): put the .env's values into this process's environment (what
    is already set wins), so that engines started natively get them as they would under compose; mark every
    .env name and every `secret_env` name as secret for this process and its children; return the values."""
    from_file = read_dotenv(dotenv) if dotenv is not None else {}
    for name, value in from_file.items():
        os.environ.setdefault(name, value)
    named = set(filter(None, os.environ.get(SECRET_NAMES_VARIABLE, "").split(",")))
    os.environ[SECRET_NAMES_VARIABLE] = ",".join(sorted(named | set(from_file) | set(secret_env)))
    return secret_values()


def redact_tree(folder: Path, secrets: list[str] | None = None) -> list[Path]:
    """`redact_file` over every text file under `folder` (a run folder); the files that held a secret."""
    values = secrets if secrets is not None else secret_values()
    if not values:
        return []
    return [path for path in sorted(folder.rglob("*")) if path.suffix in TEXT_SUFFIXES and path.is_file() and redact_file(path, values)]


def redact(text: str, secrets: list[str] | None = None) -> str:
    """Replace every secret value of the environment found in `text`."""
    for value in secrets if secrets is not None else secret_values():
        text = text.replace(value, REDACTED)
    return text


def redact_file(path: Path, secrets: list[str] | None = None) -> bool:
    """Rewrite `path` (an engine log, an executed notebook) with every secret value of the environment replaced;
    True when it held one. Engines write their own logs, so this is how a key they print is taken out."""
    values = secrets if secrets is not None else secret_values()
    try:
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError:
        return False
    if not any(value in text for value in values):
        return False
    temporary = path.with_name(path.name + ".redacting")
    temporary.write_bytes(redact(text, values).encode("utf-8", errors="surrogateescape"))
    os.replace(temporary, path)
    return True
