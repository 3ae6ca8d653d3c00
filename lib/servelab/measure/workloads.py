"""What each request sends, by the sweep's `workload.kind`: synthetic prompts (the default), a shared system
prompt, multi-turn chat sessions, or a local dataset (ShareGPT JSON or JSONL); and how long each answer may be
(`workload.output.kind`: fixed, uniform or from the dataset).

Every builder is seeded (`random.Random` from the seed and the kind), so the same params give the same prompts
on every run. `BUILDERS` is the registry: one function per kind, nothing branches on the kind elsewhere.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from servelab.errors import ParamsError
from servelab.measure.prompts import (
    CountTokens,
    Prompt,
    PromptTokenizer,
    build_prompts,
    compose_prompts,
    estimate_tokens,
    random_prompts,
)
from servelab.params import (
    DatasetOutput,
    DatasetWorkload,
    FixedOutput,
    MultiTurnWorkload,
    OutputParams,
    SharedPrefixWorkload,
    Sweep,
    SyntheticWorkload,
    UniformOutput,
    WorkloadParams,
)

__all__ = ["BUILDERS", "WorkloadContext", "build_workload", "describe_workload", "read_dataset"]


@dataclass(frozen=True, slots=True)
class WorkloadContext:
    """What every builder gets: the sweep, the point's language, how many prompts, the seed and a tokenizer."""

    sweep: Sweep
    language: str
    count: int
    seed: int
    tokenizer: PromptTokenizer | None = None
    count_tokens: CountTokens | None = None
    salt: str = ""

    def texts(self, count: int, target_tokens: int, salt: str) -> list[Prompt]:
        """`count` unique texts of `target_tokens` in the point's language (random tokens for 'random')."""
        options: dict[str, Any] = {"tokenizer": self.tokenizer, "count_tokens": self.count_tokens, "salt": self.salt + salt}
        if self.language == "random":
            return random_prompts(count, target_tokens, self.seed, **options)
        language = self.language if self.language != "sharegpt" else "en"
        return compose_prompts(language, count, target_tokens, self.seed, **options)

    def counted(self, text: str) -> int | None:
        if self.tokenizer is not None:
            return self.tokenizer.count(text)
        return self.count_tokens(text) if self.count_tokens is not None else None


Builder = Callable[[Any, WorkloadContext], list[Prompt]]


def _synthetic(workload: SyntheticWorkload, context: WorkloadContext) -> list[Prompt]:
    """The prompts servelab always sent: `measure.prompts.build_prompts` (a ShareGPT prompts_file where set)."""
    sweep = context.sweep
    return build_prompts(
        sweep, context.language, count=context.count, seed=context.seed, prompts_file=sweep.prompts_file,
        count_tokens=context.count_tokens, tokenizer=context.tokenizer, salt=context.salt,
    )


def _shared_prefix(workload: SharedPrefixWorkload, context: WorkloadContext) -> list[Prompt]:
    """Request i: prefix i mod `prefixes` (prefix_tokens long), a blank line, then its own input_tokens question.

    Chat sends the prefix as the system turn and the question as the user turn; completions send them joined.
    """
    prefixes = context.texts(workload.prefixes, workload.prefix_tokens, ":prefix")
    questions = context.texts(context.count, context.sweep.input_tokens, ":question")
    prompts = []
    for index, question in enumerate(questions):
        prefix = prefixes[index % len(prefixes)]
        counts = (prefix.token_count, question.token_count)
        prompts.append(
            Prompt(
                text=f"{prefix.text}\n\n{question.text}",
                language=context.language,
                target_tokens=workload.prefix_tokens + context.sweep.input_tokens,
                token_count=None if None in counts else sum(counts),  # type: ignore[arg-type]
                messages=(("system", prefix.text), ("user", question.text)),
            )
        )
    return prompts


def _transcript(messages: tuple[tuple[str, str], ...]) -> str:
    """The completions API's view of a chat: 'User: ...' and 'Assistant: ...' blocks, ending with 'Assistant:'."""
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "".join(f"{names[role]}: {content}\n\n" for role, content in messages) + "Assistant:"


def _multi_turn(workload: MultiTurnWorkload, context: WorkloadContext) -> list[Prompt]:
    """Conversations of `turns` user turns; turn k sends turns 1..k and the k-1 replies between them.

    Replies are the workload's own seeded text (sweep.output_tokens long), not what the server answered, so the
    prompts are known before the point starts and are the same on every run. Requests go out round by round:
    turn 1 of `sessions` conversations, then their turn 2, and so on, then the next `sessions` conversations.
    """
    groups = math.ceil(context.count / (workload.sessions * workload.turns)) if context.count else 0
    conversations = groups * workload.sessions
    users = context.texts(conversations * workload.turns, context.sweep.input_tokens, ":user")
    replies = context.texts(conversations * max(workload.turns - 1, 0), context.sweep.output_tokens, ":reply")
    prompts = []
    for group in range(groups):
        for turn in range(workload.turns):
            for session in range(workload.sessions):
                conversation = group * workload.sessions + session
                history: list[tuple[str, str]] = []
                for earlier in range(turn + 1):
                    history.append(("user", users[conversation * workload.turns + earlier].text))
                    if earlier < turn:
                        history.append(("assistant", replies[conversation * (workload.turns - 1) + earlier].text))
                messages = tuple(history)
                prompts.append(
                    Prompt(
                        text=_transcript(messages),
                        language=context.language,
                        target_tokens=(turn + 1) * context.sweep.input_tokens + turn * context.sweep.output_tokens,
                        messages=messages,
                    )
                )
    return prompts[: context.count]


# ------------------------------------------------------------------------------------------ datasets
@dataclass(frozen=True, slots=True)
class DatasetEntry:
    """One prompt of a dataset, and the length of its reply where the file gives one (text or token count)."""

    prompt: str
    reply: str | None = None
    reply_tokens: int | None = None


def _sharegpt_entry(item: Any) -> DatasetEntry | None:
    """The first human turn and the turn after it, as vLLM's ShareGPT reader takes them."""
    if not isinstance(item, dict):
        return None
    turns = item.get("conversations", item.get("conversation"))
    if not isinstance(turns, list):
        return None
    for index, turn in enumerate(turns):
        if isinstance(turn, dict) and turn.get("from", turn.get("role")) in ("human", "user"):
            value = turn.get("value", turn.get("content"))
            if not isinstance(value, str) or not value.strip():
                return None
            following = turns[index + 1] if index + 1 < len(turns) else None
            reply = following.get("value", following.get("content")) if isinstance(following, dict) else None
            return DatasetEntry(value, reply if isinstance(reply, str) else None)
    return None


def read_dataset(workload: DatasetWorkload) -> list[DatasetEntry]:
    """The entries of a local dataset file in file order; raises ParamsError naming the file and the fix."""
    path = Path(workload.path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"workload.path {path}: no such file; give a local {workload.format} file") from None
    except OSError as error:
        raise ParamsError(f"workload.path {path}: cannot read it ({error.strerror})") from None
    entries: list[DatasetEntry] = []
    if workload.format == "sharegpt":
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ParamsError(f"workload.path {path}: not JSON ({error}); ShareGPT is a JSON list of conversations") from None
        if not isinstance(data, list):
            raise ParamsError(f"workload.path {path}: the top level is {type(data).__name__}, expected a list of conversations")
        entries = [e for e in map(_sharegpt_entry, data) if e is not None]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ParamsError(f"workload.path {path} line {number}: not JSON ({error}); JSONL is one object per line") from None
            prompt = row.get(workload.prompt_field) if isinstance(row, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ParamsError(
                    f"workload.path {path} line {number}: no text under {workload.prompt_field!r}; set "
                    f"workload.prompt_field to the key that holds the prompt (keys: {sorted(row)[:8] if isinstance(row, dict) else row!r})"
                )
            length = row.get(workload.output_field)
            entries.append(DatasetEntry(prompt, reply_tokens=length if isinstance(length, int) and length > 0 else None))
    if not entries:
        raise ParamsError(
            f"workload.path {path}: no prompts found; check that it is {workload.format} "
            "(sharegpt: [{'conversations': [{'from': 'human', 'value': ...}]}]; jsonl: one {'prompt': ...} per line)"
        )
    return entries


def _dataset(workload: DatasetWorkload, context: WorkloadContext) -> list[Prompt]:
    """Up to `count` entries, shuffled with the seed, prompts longer than max_prompt_tokens skipped; each keeps its
    reply's length (counted, else estimated) for output kind 'dataset'. Fewer entries than requests repeat."""
    entries = read_dataset(workload)
    random.Random(f"servelab.measure.workloads:dataset:{context.seed}:{context.salt}").shuffle(entries)
    prompts: list[Prompt] = []
    for entry in entries:
        if len(prompts) >= context.count:
            break
        counted = context.counted(entry.prompt)
        length = counted if counted is not None else estimate_tokens(entry.prompt, "sharegpt")
        if workload.max_prompt_tokens is not None and length > workload.max_prompt_tokens:
            continue
        reply_tokens = entry.reply_tokens
        if reply_tokens is None and entry.reply:
            reply_tokens = context.counted(entry.reply) or estimate_tokens(entry.reply, "sharegpt")
        prompts.append(Prompt(entry.prompt, workload.format, length, counted, output_tokens=reply_tokens))
    if not prompts and context.count > 0:
        raise ParamsError(
            f"workload.path {workload.path}: every prompt is longer than max_prompt_tokens {workload.max_prompt_tokens}"
        )
    return prompts


BUILDERS: dict[str, Builder] = {
    "synthetic": _synthetic,
    "shared_prefix": _shared_prefix,
    "multi_turn": _multi_turn,
    "dataset": _dataset,
}
"""One prompt builder per `sweep.workload.kind`."""


# ------------------------------------------------------------------------------------------ output lengths
def _fixed(output: FixedOutput, prompts: list[Prompt], sweep: Sweep, rng: random.Random) -> list[Prompt]:
    return [replace(p, output_tokens=None) for p in prompts]


def _uniform(output: UniformOutput, prompts: list[Prompt], sweep: Sweep, rng: random.Random) -> list[Prompt]:
    return [replace(p, output_tokens=rng.randint(output.min_tokens, output.max_tokens)) for p in prompts]


def _from_dataset(output: DatasetOutput, prompts: list[Prompt], sweep: Sweep, rng: random.Random) -> list[Prompt]:
    """The dataset's reply length where it has one; sweep.output_tokens where it has none."""
    return prompts


OUTPUT_LENGTHS: dict[str, Callable[[Any, list[Prompt], Sweep, random.Random], list[Prompt]]] = {
    "fixed": _fixed,
    "uniform": _uniform,
    "dataset": _from_dataset,
}
"""One output-length rule per `sweep.workload.output.kind`."""


def build_workload(
    sweep: Sweep,
    language: str,
    *,
    count: int,
    seed: int | None = None,
    tokenizer: PromptTokenizer | None = None,
    count_tokens: CountTokens | None = None,
    salt: str = "",
) -> list[Prompt]:
    """The prompts of one load point for the sweep's workload, each with its output length; seeded and repeatable."""
    seed = sweep.seed if seed is None else seed
    context = WorkloadContext(sweep, language, count, seed, tokenizer, count_tokens, salt)
    workload: WorkloadParams = sweep.workload
    prompts = BUILDERS[workload.kind](workload, context)
    output: OutputParams = workload.output
    rng = random.Random(f"servelab.measure.workloads:output:{seed}:{salt}")
    return OUTPUT_LENGTHS[output.kind](output, prompts, sweep, rng)


# ------------------------------------------------------------------------------------------ description
def _describe_output(output: OutputParams, sweep: Sweep) -> str:
    if isinstance(output, UniformOutput):
        return f"output {output.min_tokens}-{output.max_tokens} tokens (uniform)"
    if isinstance(output, DatasetOutput):
        return f"output as long as the dataset's replies (else {sweep.output_tokens} tokens)"
    return f"output {sweep.output_tokens} tokens"


DESCRIPTIONS: dict[str, Callable[[Any, Sweep], str]] = {
    "synthetic": lambda w, s: (
        f"ShareGPT file {s.prompts_file}" if s.prompts_file else f"synthetic prompts of {s.input_tokens} tokens, each unique"
    ),
    "shared_prefix": lambda w, s: (
        f"shared prefix: a {w.prefix_tokens}-token system prompt ({w.prefixes} distinct) before a unique "
        f"{s.input_tokens}-token question"
    ),
    "multi_turn": lambda w, s: (
        f"multi-turn chat: {w.turns} turns per session, {w.sessions} sessions at a time, {s.input_tokens} tokens per "
        "user turn, each turn sending the history so far"
    ),
    "dataset": lambda w, s: f"dataset: {w.format} file {Path(w.path).name}",
}


def describe_workload(sweep: Sweep) -> str:
    """One line saying what the run sent, for the report: the workload and its output lengths."""
    workload = sweep.workload
    return f"{DESCRIPTIONS[workload.kind](workload, sweep)}; {_describe_output(workload.output, sweep)}"
