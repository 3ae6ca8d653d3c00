"""Workloads: each kind builds seeded, repeatable prompts of the asked shape, and output lengths follow the rule."""

from __future__ import annotations

import json

import pytest
from servelab.errors import ParamsError
from servelab.measure.clients import Target, request_body
from servelab.measure.workloads import BUILDERS, build_workload, describe_workload
from servelab.params import WORKLOAD_KINDS, ConcurrencyLoad, Sweep, parse_params


def words(text: str) -> int:
    return len(text.split())


def _sweep(workload: dict | None = None, **fields) -> Sweep:
    data = {"load": [ConcurrencyLoad(values=(1,))], "input_tokens": 12, "output_tokens": 5, **fields}
    if workload is not None:
        data["workload"] = workload
    return Sweep.model_validate(data)


TARGET = Target("d", "llamacpp", "m", "m", "http://127.0.0.1:1", "openai")


def test_every_workload_kind_has_a_builder_and_a_description():
    assert set(BUILDERS) == set(WORKLOAD_KINDS)
    for kind, extra in (("shared_prefix", {"prefix_tokens": 4}), ("multi_turn", {}), ("dataset", {"path": "x"})):
        assert kind.split("_")[0] in describe_workload(_sweep({"kind": kind, **extra})).replace(" ", "_")


def test_the_default_workload_is_todays_prompts():
    from servelab.measure.prompts import build_prompts

    sweep = _sweep()
    assert sweep.workload.kind == "synthetic"
    assert build_workload(sweep, "en", count=4, seed=3) == build_prompts(sweep, "en", count=4, seed=3)


def test_shared_prefix_requests_share_one_system_prompt_and_differ_after_it():
    sweep = _sweep({"kind": "shared_prefix", "prefix_tokens": 30})
    prompts = build_workload(sweep, "en", count=6, seed=1, count_tokens=words)
    systems = {p.messages[0] for p in prompts}
    assert len(systems) == 1 and next(iter(systems))[0] == "system"
    prefix = next(iter(systems))[1]
    assert 28 <= words(prefix) <= 30
    assert len({p.messages[1][1] for p in prompts}) == 6
    assert all(p.text.startswith(prefix + "\n\n") for p in prompts)
    assert build_workload(sweep, "en", count=6, seed=1, count_tokens=words) == prompts
    assert build_workload(sweep, "en", count=6, seed=2, count_tokens=words) != prompts


def test_shared_prefix_spreads_requests_over_the_distinct_prefixes():
    sweep = _sweep({"kind": "shared_prefix", "prefix_tokens": 10, "prefixes": 3})
    prompts = build_workload(sweep, "ko", count=7, seed=0)
    assert len({p.messages[0] for p in prompts}) == 3
    assert prompts[0].messages[0] == prompts[3].messages[0] == prompts[6].messages[0]


def test_multi_turn_turns_send_the_history_so_far():
    sweep = _sweep({"kind": "multi_turn", "sessions": 2, "turns": 3})
    prompts = build_workload(sweep, "en", count=6, seed=5)
    # round by round: turn 1 of both sessions, then turn 2 of both, then turn 3
    assert [len(p.messages) for p in prompts] == [1, 1, 3, 3, 5, 5]
    first, second, third = prompts[0], prompts[2], prompts[4]
    assert second.messages[:1] == first.messages and third.messages[:3] == second.messages
    assert [role for role, _ in third.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert prompts[1].messages[0] != first.messages[0]
    assert third.text.endswith("Assistant:") and third.text.startswith("User: " + first.messages[0][1])
    assert build_workload(sweep, "en", count=6, seed=5) == prompts


def test_multi_turn_chat_requests_carry_the_messages_and_completions_the_transcript():
    prompt = build_workload(_sweep({"kind": "multi_turn", "sessions": 1, "turns": 2}), "en", count=2, seed=0)[1]
    chat = request_body(TARGET, prompt.text, api="chat", output_tokens=5, ignore_eos=True, messages=prompt.messages)
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "user"]
    completion = request_body(TARGET, prompt.text, api="completions", output_tokens=5, ignore_eos=True)
    assert completion["prompt"] == prompt.text


def _sharegpt(tmp_path, conversations):
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(conversations), encoding="utf-8")
    return str(path)


SHAREGPT = [
    {"id": "a", "conversations": [{"from": "human", "value": "one two three"}, {"from": "gpt", "value": "a b c d e f g"}]},
    {"id": "b", "conversations": [{"from": "human", "value": "four five six seven"}, {"from": "gpt", "value": "x y"}]},
    {"id": "c", "conversations": [{"from": "gpt", "value": "no human turn"}]},
]  # fmt: skip


def test_a_sharegpt_dataset_gives_its_first_human_turns_and_their_reply_lengths(tmp_path):
    sweep = _sweep({"kind": "dataset", "path": _sharegpt(tmp_path, SHAREGPT), "output": {"kind": "dataset"}})
    prompts = build_workload(sweep, "en", count=5, seed=0, count_tokens=words)
    assert sorted((p.text, p.output_tokens) for p in prompts) == [("four five six seven", 2), ("one two three", 7)]
    assert {p.language for p in prompts} == {"sharegpt"}


def test_a_jsonl_dataset_reads_vllms_custom_format(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "hello there", "output_tokens": 9}\n\n{"prompt": "and again", "output_tokens": 3}\n{"prompt": "no length"}\n')
    sweep = _sweep({"kind": "dataset", "format": "jsonl", "path": str(path), "output": {"kind": "dataset"}})
    prompts = build_workload(sweep, "en", count=3, seed=0, count_tokens=words)
    assert sorted((p.text, p.output_tokens or 0, p.token_count) for p in prompts) == [
        ("and again", 3, 2), ("hello there", 9, 2), ("no length", 0, 2)  # None: the sweep's output_tokens
    ]
    fixed = build_workload(_sweep({"kind": "dataset", "format": "jsonl", "path": str(path)}), "en", count=3, seed=0)
    assert {p.output_tokens for p in fixed} == {None}  # fixed: the sweep's output_tokens


def test_a_jsonl_line_without_the_prompt_field_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "hello"}\n')
    sweep = _sweep({"kind": "dataset", "format": "jsonl", "path": str(path)})
    with pytest.raises(ParamsError, match=r"line 1: no text under 'prompt'.*prompt_field"):
        build_workload(sweep, "en", count=1, seed=0)


def test_a_missing_dataset_is_a_params_error(tmp_path):
    with pytest.raises(ParamsError, match="no such file"):
        build_workload(_sweep({"kind": "dataset", "path": str(tmp_path / "none.json")}), "en", count=1, seed=0)


def test_uniform_output_lengths_are_seeded_draws_in_the_range():
    sweep = _sweep({"kind": "synthetic", "output": {"kind": "uniform", "min_tokens": 3, "max_tokens": 9}})
    lengths = [p.output_tokens for p in build_workload(sweep, "en", count=40, seed=2)]
    assert set(lengths) <= set(range(3, 10)) and len(set(lengths)) > 3
    assert [p.output_tokens for p in build_workload(sweep, "en", count=40, seed=2)] == lengths


def test_dataset_output_lengths_need_a_dataset_workload():
    base = {"name": "x", "deployments": [{"name": "a", "model": "smollm2", "engine": {"kind": "llamacpp"}}]}
    sweep = {"load": [{"kind": "concurrency", "values": [1]}], "workload": {"kind": "synthetic", "output": {"kind": "dataset"}}}
    with pytest.raises(ParamsError, match="output kind 'dataset'"):
        parse_params({**base, "sweep": sweep})
    with pytest.raises(ParamsError, match=r"sweep.workload.output.min_tokens"):
        parse_params({**base, "sweep": {**sweep, "workload": {"kind": "synthetic", "output": {"kind": "uniform", "max_tokens": 3}}}})


def test_the_description_names_the_workload_and_its_output_lengths():
    sweep = _sweep({"kind": "shared_prefix", "prefix_tokens": 512, "output": {"kind": "uniform", "min_tokens": 8, "max_tokens": 32}})
    assert describe_workload(sweep) == (
        "shared prefix: a 512-token system prompt (1 distinct) before a unique 12-token question; "
        "output 8-32 tokens (uniform)"
    )
    assert describe_workload(_sweep()) == "synthetic prompts of 12 tokens, each unique; output 5 tokens"
