"""The comparison's long-lived `vllm bench serve` process, where vLLM is absent (this machine, CI).

Its success path needs vLLM and runs on the GPU machine only (benchmarks/gpu_truth.py); here the worker is
real and so is the interpreter: it must fail at once, with a message that names the cause and the log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from servelab.agreement import VllmBench
from servelab.errors import VllmBenchError


def test_without_vllm_the_bench_worker_fails_at_once_naming_the_import_and_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "vllm-bench.log"
    # A hang would end in 'no reply within 60 s', a different message.
    with pytest.raises(VllmBenchError) as caught, VllmBench(sys.executable, log_path, timeout_s=60):
        pass
    assert "cannot import vLLM's benchmark" in str(caught.value) and str(log_path) in str(caught.value)
    assert "ModuleNotFoundError" in log_path.read_text(), "vLLM's side of the story goes to the log, not the replies"
