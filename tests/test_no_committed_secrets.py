"""No private key or token-shaped string is committed: every file git tracks, or would add, is scanned.

A test that needs a token-shaped string builds it at run time ("hf_" + "..."), so that no token-shaped literal
is ever committed, not even a fake one: a scanner outside this project cannot tell a fake from a real token.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATTERNS = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "Hugging Face token": re.compile(r"hf_[A-Za-z0-9]{30,}"),
    "OpenAI-style key": re.compile(r"sk-(?:proj-)?[A-Za-z0-9_-]{30,}"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+=]{40}"),
}


def find_secrets(text: str) -> list[tuple[str, int]]:
    """(kind, line number) of every key- or token-shaped string in `text`."""
    found = []
    for kind, pattern in PATTERNS.items():
        for match in pattern.finditer(text):
            found.append((kind, text.count("\n", 0, match.start()) + 1))
    return found


def candidate_files() -> list[Path]:
    """What git tracks, plus untracked files it would add (not ignored): what the next commit can hold."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode("utf-8", errors="surrogateescape")
    return [REPO / name for name in sorted(set(listed.split("\0"))) if name and (REPO / name).is_file()]


def test_no_committed_file_holds_a_private_key_or_a_token():
    """Expectation: no file git tracks or would add holds a private key block, an hf_ or sk- token or an AWS key;
    a hit names the file, the line and the kind (never the value)."""
    files = candidate_files()
    assert len(files) > 50
    hits = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        hits += [f"{path.relative_to(REPO)}:{line}: {kind}" for kind, line in find_secrets(text)]
    assert not hits, "secrets committed:\n" + "\n".join(hits)


def _private_key() -> str:
    return "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END " + "RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("planted", "kind"),
    [
        (lambda: _private_key(), "private key"),
        (lambda: "-----BEGIN " + "OPENSSH PRIVATE KEY-----", "private key"),
        (lambda: "token = 'hf_" + "aB3" * 12 + "'", "Hugging Face token"),
        (lambda: "OPENAI_API_KEY=sk-" + "Zx9" * 16, "OpenAI-style key"),
        (lambda: "key: sk-proj-" + "Q1w_" * 10, "OpenAI-style key"),
        (lambda: "id = AKIA" + "QWERTYUIOPASDFGH", "AWS access key id"),
        (lambda: "aws_secret_access_key = " + "abcd/EFGH+" * 4, "AWS secret access key"),
        (lambda: "FAKE_SECRET = 'hf_servelab" + "FAKEsecret0123456789abcdef'", "Hugging Face token"),
    ],
)
def test_the_scanner_finds_each_kind_of_planted_secret_and_its_line(planted, kind):
    """Expectation: a planted secret of each kind is found, on the line it was planted on."""
    text = "first line\nsecond line\n" + planted() + "\n"
    assert (kind, 3) in find_secrets(text)


@pytest.mark.parametrize(
    "harmless",
    [
        "hf_short_token",
        "sk-not-long-enough",
        "AKIA-is-a-prefix",
        r"re.compile(r'hf_[A-Za-z0-9]{30,}')",
        "-----BEGIN CERTIFICATE-----",
        "FAKE_SECRET = 'hf_' + 'servelabFAKEsecret0123456789abcdef'",
    ],
)
def test_the_scanner_leaves_near_misses_and_tokens_built_at_run_time_alone(harmless):
    """Expectation: short lookalikes, the patterns' own source, certificates and tokens built by concatenation
    pass; a token-shaped literal is found even when it says FAKE (see the planted cases above)."""
    assert find_secrets(harmless) == []
