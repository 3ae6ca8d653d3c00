"""Checks: the client's own ceiling, agreement with vllm bench, other tools' files, comparisons."""
