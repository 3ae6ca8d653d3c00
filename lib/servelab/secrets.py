"""Secrets: which names and values look secret, and how every file a run writes is cleaned of them."""

from __future__ import annotations

import os
import re
from pathlib import Path

SECRET_KEY = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
"""Names of settings and environment variables that hold secrets: refused in params, redacted in outputs."""
SECRET_VALUE = re.compile(
    r"hf_[A-Za-z0-9]{30,}|sk-(?:proj-)?[A-Za-z0-9_-]{30,}|(?:AKIA|ASIA)[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
"""Values shaped like API keys (Hugging Face, OpenAI, AWS) or private keys: never welcome in a params file."""

REDACTED = "***redacted***"


def secret_values() -> list[str]:
    """Values of environment variables whose names look secret (HF_TOKEN, OPENAI_API_KEY, ...), longest first."""
    values = [value for name, value in os.environ.items() if SECRET_KEY.search(name) and len(value) >= 8]
    return sorted(set(values), key=len, reverse=True)


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
