"""The workloads through `servelab run` (all four notebooks, papermill) against the real llama-server: a shared
prefix that the server's prompt cache reuses, multi-turn chats whose prompts grow turn by turn, and a local
ShareGPT dataset whose replies set the output lengths. Tiny params: one point of 4 requests each."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fixtures_run import TINY
from servelab.records import read_jsonl
from servelab.run import run

DATASET = Path(__file__).resolve().parents[1] / "data" / "workloads" / "sharegpt_tiny.json"


def run_workload(folder: Path, name: str, workload: dict, **sweep: object):
    data = {
        **TINY,
        "name": name,
        "sweep": {
            **TINY["sweep"], "languages": ["en"], "input_tokens": 8, "output_tokens": 4,
            "load": [{"kind": "concurrency", "values": [1]}], "workload": workload, **sweep,
        },
    }  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run(path, outputs_dir=folder / "outputs")
    requests = [r for r in read_jsonl(result.run_dir / "requests.jsonl") if not r["warmup"]]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    return result, requests, manifest


@pytest.fixture(scope="module")
def shared_prefix(tmp_path_factory: pytest.TempPathFactory):
    return run_workload(tmp_path_factory.mktemp("shared"), "shared", {"kind": "shared_prefix", "prefix_tokens": 64})


@pytest.fixture(scope="module")
def multi_turn(tmp_path_factory: pytest.TempPathFactory):
    workload = {"kind": "multi_turn", "sessions": 2, "turns": 2}
    return run_workload(tmp_path_factory.mktemp("chat"), "chat", workload, api="chat", warmup_requests=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    workload = {"kind": "dataset", "path": str(DATASET), "output": {"kind": "dataset"}}
    return run_workload(tmp_path_factory.mktemp("dataset"), "dataset", workload, ignore_eos=True)


def test_a_shared_prefix_run_reuses_the_servers_prompt_cache(shared_prefix):
    result, requests, manifest = shared_prefix
    assert manifest["workload"].startswith("shared prefix: a 64-token system prompt")
    assert len(requests) == 4 and all(r["error_class"] is None for r in requests)
    # the server counts prefix + question (+ its BOS and the blank line)
    assert all(64 + 8 <= r["prompt_tokens"] <= 64 + 8 + 4 for r in requests), [r["prompt_tokens"] for r in requests]
    # after the warm-up, llama-server finds the 64-token prefix in its cache for every request
    assert all(r["server_timings"]["cache_n"] >= 60 for r in requests), [r["server_timings"] for r in requests]
    assert (result.run_dir / "report.html").stat().st_size > 0


def test_a_multi_turn_run_sends_each_turn_with_the_history(multi_turn):
    result, requests, manifest = multi_turn
    assert manifest["workload"].startswith("multi-turn chat: 2 turns per session, 2 sessions at a time")
    assert len(requests) == 4 and all(r["error_class"] is None for r in requests)
    by_index = sorted(requests, key=lambda r: r["request_index"])
    first_turns, second_turns = by_index[:2], by_index[2:]
    # turn 2 carries turn 1 and a 4-token reply: more than 8 tokens longer than turn 1 of the same session
    for first, second in zip(first_turns, second_turns, strict=True):
        assert second["prompt_tokens"] >= first["prompt_tokens"] + 8 + 4, (first["prompt_tokens"], second["prompt_tokens"])
    summary = pd.read_csv(result.run_dir / "summary.csv")
    assert summary[(summary.metric == "requests") & (summary.stat == "value")].value.tolist() == [4.0]


def test_a_dataset_run_sends_the_files_prompts_and_its_reply_lengths(dataset):
    result, requests, manifest = dataset
    assert manifest["workload"] == "dataset: sharegpt file sharegpt_tiny.json; output as long as the dataset's replies (else 4 tokens)"
    assert len(requests) == 4 and all(r["error_class"] is None for r in requests)
    assert {r["language"] for r in requests} == {"sharegpt"}
    questions = {len(turn["conversations"][0]["value"]) for turn in json.loads(DATASET.read_text())}
    assert {r["prompt_chars"] for r in requests} <= questions
    # ignore_eos: each request generated exactly its reply's length, which differs between replies
    assert len({r["output_tokens"] for r in requests}) > 1 and all(r["output_tokens"] > 4 for r in requests)
