"""The typed schema of a params file, and the one place that reads YAML into it.

A params file names what to deploy (`deployments`), what load to put on it (`sweep`), how to sample memory
(`memory`) and what to do when things fail (`policy`). Unknown keys are errors everywhere.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from servelab.errors import ParamsError
from servelab.secrets import SECRET_FLAG, SECRET_KEY, SECRET_VALUE, redact

LANGUAGES = ("en", "ko", "zh", "ja", "es")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,47}$"
MAX_LOAD_POINTS = 10_000
"""Load points one params file may ask for; each takes seconds at least, so more is a typo, not a plan."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: Any) -> Any:
        # pydantic reads `true` as 1 wherever a number goes: `values: [true]` would be concurrency 1.
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                listed = isinstance(value, list | tuple) and any(isinstance(v, bool) for v in value)
                if field is not None and (isinstance(value, bool) or listed) and "bool" not in str(field.annotation):
                    raise ValueError(f"{name}: {value!r} holds true/false where a number goes; write the number itself")
        return data


# ----------------------------------------------------------------------------------------------- engines
class EngineSettings(Strict):
    """What every engine's params answer besides their own flags."""

    def gpus_needed(self) -> int:
        """GPUs one server of these settings spans: its tensor x data parallel sizes, 1 for most engines."""
        return 1


class LlamaCppEngine(EngineSettings):
    """llama.cpp's llama-server: the embedded CPU engine, or a CUDA build with its layers on the GPU."""

    kind: Literal["llamacpp"] = "llamacpp"
    binary: str | None = Field(None, description="path of llama-server; default: the CPU one scripts/install-engine.sh built (scripts/build-llama-server-cuda.sh builds a CUDA one)")
    gpu_layers: Annotated[int, Field(ge=0, le=10_000)] | Literal["all"] | None = Field(
        None, description="--n-gpu-layers: layers held on the GPU, a number or 'all' (needs a CUDA build); default: not passed, and the memory rule counts host memory",
    )
    parallel_slots: int = Field(4, ge=1, le=256, description="-np: sequences decoded together")
    ctx_size: int = Field(4096, ge=256, le=1_048_576, description="-c: KV cache size in tokens, shared by the slots")
    threads: int | None = Field(None, ge=1, le=1024, description="-t; default: llama.cpp's choice")
    image: str = Field("ghcr.io/ggml-org/llama.cpp:server-b6140", description="compose image, pinned")
    extra_args: tuple[str, ...] = Field((), description="more command-line flags, passed through as they are")

    def on_gpu(self) -> bool:
        """Whether it is told to hold layers on the GPU (gpu_layers 'all' or above 0)."""
        return self.gpu_layers not in (None, 0)


class VllmEngine(EngineSettings):
    """vLLM's OpenAI-compatible server (v1 engine)."""

    kind: Literal["vllm"] = "vllm"
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="--gpu-memory-utilization: share of TOTAL GPU memory, weights included (vLLM v1)")
    max_model_len: int | None = Field(None, ge=16, description="--max-model-len: longest prompt + output, tokens")
    max_num_seqs: int | None = Field(None, ge=1, le=4096, description="--max-num-seqs: sequences decoded together")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field("auto", description="--dtype of weights and activations")
    enforce_eager: bool = Field(False, description="--enforce-eager: no CUDA graphs or torch.compile (faster start, slower decode)")
    image: str = Field("vllm/vllm-openai:v0.26.0", description="compose image, pinned")
    python: str = Field("python3", description="interpreter that has vllm, for native launch")
    extra_args: tuple[str, ...] = Field((), description="more command-line flags, passed through as they are")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="--tensor-parallel-size: GPUs each copy of the model is split over")
    data_parallel_size: int = Field(1, ge=1, le=64, description="--data-parallel-size: copies of the model, each on its own GPUs")

    def gpus_needed(self) -> int:
        return self.tensor_parallel_size * self.data_parallel_size


class SglangEngine(EngineSettings):
    """SGLang's server (`python -m sglang.launch_server`)."""

    kind: Literal["sglang"] = "sglang"
    mem_fraction_static: float = Field(0.9, gt=0.0, le=1.0, description="--mem-fraction-static: share of the memory free at start for weights + KV cache")
    context_length: int | None = Field(None, ge=16, description="--context-length (vLLM's max_model_len)")
    max_running_requests: int | None = Field(None, ge=1, le=4096, description="--max-running-requests (vLLM's max_num_seqs)")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field("auto", description="--dtype")
    image: str = Field("lmsysorg/sglang:v0.5.5-cu129", description="compose image, pinned")
    python: str = Field("python3", description="interpreter that has sglang, for native launch")
    extra_args: tuple[str, ...] = Field((), description="more command-line flags, passed through as they are")
    tp_size: int = Field(1, ge=1, le=64, description="--tp-size: GPUs each copy of the model is split over (tensor parallel)")
    dp_size: int = Field(1, ge=1, le=64, description="--dp-size: copies of the model (data parallel)")

    def gpus_needed(self) -> int:
        return self.tp_size * self.dp_size


class OllamaEngine(EngineSettings):
    """Ollama (`ollama serve`); models are tags such as `tinyllama:1.1b`."""

    kind: Literal["ollama"] = "ollama"
    num_ctx: int = Field(2048, ge=256, description="OLLAMA_CONTEXT_LENGTH: context per sequence, tokens")
    num_parallel: int = Field(1, ge=1, le=256, description="OLLAMA_NUM_PARALLEL: requests served at once per model")
    keep_alive: str = Field("5m", description="how long a model stays loaded after its last request")
    max_loaded_models: int | None = Field(None, ge=1, le=64, description="OLLAMA_MAX_LOADED_MODELS: models one server holds at once; default: Ollama's")
    binary: str = Field("ollama", description="the ollama executable, for native launch")
    image: str = Field("ollama/ollama:0.12.6", description="compose image, pinned")
    extra_args: tuple[str, ...] = Field((), description="more command-line flags, passed through as they are")

    @field_validator("keep_alive")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not re.fullmatch(r"-1|0|\d+(\.\d+)?(ms|s|m|h)", value):
            raise ValueError(f"keep_alive {value!r} is not a duration such as '5m', '30s', '0' or '-1'")
        return value


class EndpointEngine(EngineSettings):
    """A server that runs already, anywhere servelab can reach: servelab neither starts nor stops it."""

    kind: Literal["endpoint"] = "endpoint"
    base_url: str = Field(pattern=r"^https?://[^\s/?#@]+(/[^\s?#]*)?$", description="where it answers, without /v1: http://127.0.0.1:8000, https://host/prefix")
    api: Literal["openai", "ollama"] = Field("openai", description="openai: /v1/completions, /v1/chat/completions (SSE); ollama: /api/generate, /api/chat (NDJSON)")
    served_model: str | None = Field(None, min_length=1, description="the model name requests carry; default: the deployment's model")
    metrics: Literal["vllm", "sglang", "llamacpp", "none"] = Field("none", description="whose /metrics counters it serves (to check the client against the server), or none")

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


EngineParams = Annotated[
    LlamaCppEngine | VllmEngine | SglangEngine | OllamaEngine | EndpointEngine, Field(discriminator="kind")
]
FRAMEWORKS = tuple(
    typing.get_args(member.model_fields["kind"].annotation)[0] for member in typing.get_args(typing.get_args(EngineParams)[0])
)
"""Every engine kind, in the union's order; adding a class to the union registers its kind."""


# ----------------------------------------------------------------------------------------------- models
class Deployment(Strict):
    """One server: a framework serving one model."""

    name: str = Field(pattern=NAME_PATTERN, description="short id, used in file names and compose services")
    model: str = Field(min_length=1, description="hub id, local path, GGUF path or Ollama tag; 'smollm2' is the embedded GGUF")
    shape: str | None = Field(None, description="serve a shape model (config + local tokenizer, dummy weights) of this architecture")
    engine: EngineParams
    port: int | None = Field(None, ge=1024, le=65535, description="default: a free loopback port")
    startup_timeout_s: float = Field(600.0, gt=0, le=7200, description="seconds to wait for the health check before giving up")
    env: dict[str, str] = Field(default_factory=dict, description="plain environment; secrets belong in the environment, named in secret_env")
    secret_env: tuple[str, ...] = Field((), description="names of environment variables passed through, never their values; for kind endpoint, the one that holds its API key (sent as a bearer token)")
    group: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="co-location group: the deployments that share a GPU, placed on one node under --cluster; default: one group",
    )
    gpus: tuple[int, ...] | None = Field(None, description="the GPUs this server may use, by index: CUDA_VISIBLE_DEVICES natively, device_ids in compose; default: all")

    @field_validator("gpus")
    @classmethod
    def _gpu_indices(cls, gpus: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if gpus is None:
            return None
        if not gpus:
            raise ValueError("gpus is empty; name at least one GPU index, or leave gpus out to use them all")
        if any(not 0 <= index <= 63 for index in gpus) or len(set(gpus)) != len(gpus):
            raise ValueError(f"gpus {list(gpus)} must be distinct GPU indices in 0..63, as nvidia-smi numbers them")
        return gpus

    @model_validator(mode="after")
    def _enough_gpus(self) -> Deployment:
        needed = self.engine.gpus_needed()
        if self.gpus is not None and len(self.gpus) < needed:
            raise ValueError(
                f"{self.name}: its parallel sizes need {needed} GPUs but gpus names {len(self.gpus)} "
                f"({list(self.gpus)}); name {needed} GPUs or lower the tensor/data parallel size"
            )
        if self.gpus is not None and "CUDA_VISIBLE_DEVICES" in self.env:
            raise ValueError(f"{self.name}: set the GPUs with gpus, not with env.CUDA_VISIBLE_DEVICES as well")
        return self

    @field_validator("env")
    @classmethod
    def _no_secret_values(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if SECRET_KEY.search(key):
                raise ValueError(
                    f"env key {key!r} looks like a secret; name it in secret_env and set it in the environment or .env"
                )
        return env

    @field_validator("engine")
    @classmethod
    def _no_secret_flags(cls, engine: Any) -> Any:
        for flag in getattr(engine, "extra_args", ()):  # an endpoint is started elsewhere and takes no flags
            if SECRET_FLAG.search(flag):
                name = flag.split("=", 1)[0]
                raise ValueError(
                    f"extra_args flag {name!r} passes a secret on the command line, where it lands in the manifest "
                    f"and in `ps`; set the engine's environment variable for it instead (e.g. VLLM_API_KEY, "
                    f"LLAMA_ARG_API_KEY) in the environment or .env, and name it in secret_env"
                )
        return engine


# ----------------------------------------------------------------------------------------------- load
class ConcurrencyLoad(Strict):
    """Closed loop: each of N workers sends its next request when the last one ends."""

    kind: Literal["concurrency"] = "concurrency"
    values: tuple[int, ...] = Field(min_length=1, description="concurrency levels, one load point each")
    ramp_up_s: float = Field(0.0, ge=0, description="workers start spread evenly over this time")

    @field_validator("values")
    @classmethod
    def _positive(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        for value in values:
            if not 1 <= value <= 100_000:
                raise ValueError(f"concurrency {value} is outside 1..100000")
        return values


class RateLoad(Strict):
    """Open loop: requests leave at scheduled times, whatever the server does."""

    kind: Literal["constant", "poisson", "gamma"]
    values: tuple[float, ...] = Field(min_length=1, description="requests per second")
    burstiness: float = Field(1.0, gt=0, description="gamma shape; 1 is Poisson, below 1 burstier")
    max_concurrency: int | None = Field(None, ge=1, le=100_000, description="cap on requests in flight; arrivals beyond it wait (and their lag is recorded)")
    ramp_up_s: float = Field(0.0, ge=0, description="the rate rises linearly from 0 to the value over this time")

    @field_validator("values")
    @classmethod
    def _positive(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        for value in values:
            if not 0 < value <= 1_000_000:
                raise ValueError(f"rate {value} req/s is outside (0, 1000000]")
        return values


LoadParams = Annotated[ConcurrencyLoad | RateLoad, Field(discriminator="kind")]


# ----------------------------------------------------------------------------------------------- workloads
class FixedOutput(Strict):
    """Every request asks for sweep.output_tokens."""

    kind: Literal["fixed"] = "fixed"


class UniformOutput(Strict):
    """Each request asks for a seeded draw, uniform in [min_tokens, max_tokens]."""

    kind: Literal["uniform"]
    min_tokens: int = Field(ge=1, le=1_000_000, description="shortest output asked for, tokens")
    max_tokens: int = Field(ge=1, le=1_000_000, description="longest output asked for, tokens")

    @model_validator(mode="after")
    def _ordered(self) -> UniformOutput:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens {self.min_tokens} is above max_tokens {self.max_tokens}")
        return self


class DatasetOutput(Strict):
    """Each request asks for as many tokens as the dataset's own reply has (dataset workloads only)."""

    kind: Literal["dataset"]


OutputParams = Annotated[FixedOutput | UniformOutput | DatasetOutput, Field(discriminator="kind")]


class SyntheticWorkload(Strict):
    """Today's prompts: the shipped passages (or random tokens) of each language, input_tokens long, each unique."""

    kind: Literal["synthetic"] = "synthetic"
    output: OutputParams = Field(FixedOutput(), description="output lengths: fixed, uniform or dataset")


class SharedPrefixWorkload(Strict):
    """Every request starts with the same system prompt of prefix_tokens, then a unique input_tokens question."""

    kind: Literal["shared_prefix"]
    prefix_tokens: int = Field(ge=1, le=1_000_000, description="length of the shared system prompt, tokens")
    prefixes: int = Field(1, ge=1, le=10_000, description="distinct shared prompts; request i uses prefix i mod prefixes")
    output: OutputParams = Field(FixedOutput(), description="output lengths: fixed, uniform or dataset")


class MultiTurnWorkload(Strict):
    """Chat sessions: turn k sends the whole history so far (k user turns, k-1 assistant replies)."""

    kind: Literal["multi_turn"]
    sessions: int = Field(4, ge=1, le=100_000, description="conversations interleaved turn by turn; keep it >= the concurrency")
    turns: int = Field(3, ge=1, le=1000, description="user turns per conversation")
    output: OutputParams = Field(FixedOutput(), description="output lengths: fixed, uniform or dataset")


class DatasetWorkload(Strict):
    """Prompts from a local file: ShareGPT JSON (first human turn) or JSONL (one object per line)."""

    kind: Literal["dataset"]
    path: str = Field(min_length=1, description="the local file")
    format: Literal["sharegpt", "jsonl"] = Field("sharegpt", description="sharegpt: a JSON list of {conversations: [...]}; jsonl: one object per line")
    prompt_field: str = Field("prompt", description="jsonl: the key holding the prompt text")
    output_field: str = Field("output_tokens", description="jsonl: the key holding the output length (for output: {kind: dataset})")
    max_prompt_tokens: int | None = Field(None, ge=1, description="skip prompts longer than this, tokens")
    output: OutputParams = Field(FixedOutput(), description="output lengths: fixed, uniform or dataset")


WorkloadParams = Annotated[
    SyntheticWorkload | SharedPrefixWorkload | MultiTurnWorkload | DatasetWorkload, Field(discriminator="kind")
]
WORKLOAD_KINDS = ("synthetic", "shared_prefix", "multi_turn", "dataset")


class SloParams(Strict):
    """Service-level objectives: a request is good when every limit set holds; goodput counts good requests per second."""

    ttft_ms: float | None = Field(None, gt=0, description="time to first token, ms")
    itl_ms: float | None = Field(None, gt=0, description="a request's mean gap between output chunks, ms")
    tpot_ms: float | None = Field(None, gt=0, description="time per output token after the first, ms")
    e2e_ms: float | None = Field(None, gt=0, description="send to the end of the stream, ms")
    from_intended: bool = Field(False, description="measure TTFT and E2E from the intended send time (counts client lag)")


class SearchParams(Strict):
    """`servelab search`: raise the load by `factor` until the SLOs break or throughput stops growing."""

    load_kind: Literal["concurrency", "constant", "poisson", "gamma"] = Field("concurrency", description="what to raise")
    start: float = Field(1, gt=0, description="the first load tried")
    factor: float = Field(2.0, gt=1, le=100, description="each step multiplies the load by this")
    max_value: float = Field(256, gt=0, description="the highest load tried")
    min_gain: float = Field(0.05, ge=-1, description="stop when output tok/s grows by less than this fraction (-1: never)")
    percentile: float = Field(99.0, gt=0, le=100, description="the SLOs must hold at this percentile of the requests")


class Sweep(Strict):
    """The grid: every deployment x language x load value is one load point."""

    api: Literal["completions", "chat"] = Field("completions", description="/v1/completions (/api/generate) or /v1/chat/completions (/api/chat)")
    languages: tuple[str, ...] = Field(("en",), min_length=1, description="prompt sets: en, ko, zh, ja, es, or random (random tokens)")
    input_tokens: int = Field(128, ge=1, le=1_000_000, description="target prompt length, tokens")
    output_tokens: int = Field(64, ge=1, le=1_000_000, description="max_tokens (num_predict) of every request")
    ignore_eos: bool = Field(True, description="ask the server to generate exactly output_tokens")
    load: tuple[LoadParams, ...] = Field(min_length=1, description="load modes, each with its values (see sweep.load[])")
    requests_per_point: int | None = Field(32, ge=1, le=10_000_000, description="measured requests per load point (warm-up not counted); null with duration_s")
    duration_s: float | None = Field(None, gt=0, le=86_400, description="run each point for this long instead of by count")
    warmup_requests: int = Field(2, ge=0, le=100_000, description="sent first, tagged warmup, left out of the results")
    request_timeout_s: float = Field(120.0, gt=0, le=86_400, description="a request still running after this is recorded as a timeout")
    seed: int = Field(0, description="seeds prompts and arrival times, so a run can be repeated")
    prompts_file: str | None = Field(None, description="a local ShareGPT-format JSON file instead of the shipped prompts")
    client_processes: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        1, description="client processes per load point, each pinned to its own core; 'auto': enough to keep each within 70% of the calibrated per-core ceiling (servelab calibrate)"
    )
    workload: WorkloadParams = Field(SyntheticWorkload(), description="what to send: synthetic, shared_prefix, multi_turn or dataset (see sweep.workload)")

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, languages: tuple[str, ...]) -> tuple[str, ...]:
        for language in languages:
            if language not in LANGUAGES + ("random",):
                raise ValueError(f"language {language!r} is not one of {', '.join(LANGUAGES + ('random',))}")
        return languages

    @model_validator(mode="after")
    def _count_or_duration(self) -> Sweep:
        if self.duration_s is None and self.requests_per_point is None:
            raise ValueError("set requests_per_point or duration_s")
        if self.workload.output.kind == "dataset" and self.workload.kind != "dataset":
            raise ValueError(
                f"workload.output kind 'dataset' takes output lengths from a dataset, but the workload is "
                f"{self.workload.kind!r}; use output kind fixed or uniform, or workload kind dataset"
            )
        if self.prompts_file and self.workload.kind != "synthetic":
            raise ValueError(
                f"prompts_file and a {self.workload.kind!r} workload both say what to send; drop prompts_file "
                "(a ShareGPT file is workload {kind: dataset, path: ...})"
            )
        return self


class Memory(Strict):
    sample_hz: float = Field(20.0, gt=0, le=1000, description="memory samples per second (NVML, or host RSS without a GPU)")
    device_index: int = Field(0, ge=0, le=64, description="the GPU whose free memory is checked before starting a deployment that names no gpus; the sampler reads every GPU")
    compose_project: str | None = Field(None, pattern=NAME_PATTERN, description="the docker compose project whose containers run these deployments (a service per deployment, as `servelab compose` writes): NVML's container pids are attributed to them")


class Policy(Strict):
    on_engine_death: Literal["abort", "continue"] = Field("abort", description="when a server dies: stop the run, or mark its points aborted and go on")
    max_error_rate: float = Field(0.5, ge=0, le=1, description="a point with more failed requests is marked failed")


RANKING_FIGURES = ("output_tok_s", "total_tok_s", "req_s", "goodput_req_s", "ttft_ms", "tpot_ms", "e2e_ms")
"""What the report may rank deployments by: a throughput (its best over the load points, higher first) or a latency
(its median at the lowest load, lower first)."""


class Report(Strict):
    rank_by: Literal[RANKING_FIGURES] = Field(  # type: ignore[valid-type]
        "output_tok_s", description="the figure the report's first table ranks deployments by"
    )


class Params(Strict):
    """A whole experiment."""

    name: str = Field(pattern=NAME_PATTERN, description="short id of the experiment")
    description: str = Field("", description="one sentence for the report")
    deployments: tuple[Deployment, ...] = Field(min_length=1, description="the servers (see deployments[])")
    sweep: Sweep = Field(description="the load grid (see sweep)")
    memory: Memory = Field(Memory(), description="the memory sampler (see memory)")
    policy: Policy = Field(Policy(), description="what to do on failures (see policy)")
    slo: SloParams | None = Field(None, description="service-level objectives; with them summary.csv has goodput_req_s (see slo)")
    search: SearchParams = Field(SearchParams(), description="`servelab search`: the highest load meeting the SLOs (see search)")
    report: Report = Field(Report(), description="how the report ranks (see report)")

    @model_validator(mode="after")
    def _unique_names_and_ports(self) -> Params:
        names = [d.name for d in self.deployments]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"deployment names must be unique; repeated: {', '.join(duplicated)}")
        ports = [d.port for d in self.deployments if d.port is not None]
        taken = sorted({p for p in ports if ports.count(p) > 1})
        if taken:
            raise ValueError(f"deployment ports must be unique; repeated: {', '.join(map(str, taken))}")
        values = sum(len(load.values) for load in self.sweep.load)
        points = len(names) * len(self.sweep.languages) * values + (values if len(names) > 1 else 0)
        if points > MAX_LOAD_POINTS:
            raise ValueError(
                f"the grid has {points:,} load points (deployments x languages x load values); at most "
                f"{MAX_LOAD_POINTS:,} fit one run: split it into several params files"
            )
        return self


# ----------------------------------------------------------------------------------------------- loading
def _key_path(location: tuple[Any, ...]) -> str:
    # pydantic puts the discriminator's tag inside the path ('engine.vllm.dtype'); users wrote 'engine.dtype'.
    parts: list[str] = []
    for part in location:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in FRAMEWORKS or part in ("concurrency", "constant", "poisson", "gamma") or part in WORKLOAD_KINDS + ("fixed", "uniform"):
            continue
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"


MAX_PROBLEMS_SHOWN = 20


def _masked(value: Any) -> Any:
    """`value` with the values of secret-looking keys (HF_TOKEN, api_key, ...) replaced, for error messages."""
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and SECRET_KEY.search(k) else _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # A secret flag's value follows it ('--api-key', 'VALUE') or is joined to it ('--api-key=VALUE').
        after_flag = [i > 0 and isinstance(value[i - 1], str) and bool(SECRET_FLAG.search(value[i - 1])) for i in range(len(value))]
        return [
            "***" if hidden else (v.split("=", 1)[0] + "=***" if isinstance(v, str) and "=" in v and SECRET_FLAG.search(v) else _masked(v))
            for v, hidden in zip(value, after_flag, strict=True)
        ]
    return value


def _without_echoes(problems: list[Any]) -> list[Any]:
    """Leave out a list's 'too short' problem when one of its items has its own: pydantic counts a list whose
    only item failed as empty, which adds a misleading 'Tuple should have at least 1 item' line."""
    failed_inside = [tuple(p["loc"]) for p in problems]
    return [
        p for p in problems
        if not (p["type"] == "too_short" and p.get("input") and any(loc[: len(p["loc"])] == tuple(p["loc"]) and len(loc) > len(p["loc"]) for loc in failed_inside))
    ]


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: file, key path, bad value (secrets masked), and what is allowed."""

    problems = _without_echoes(error.errors())
    lines = [f"{source}: {len(problems)} problem(s) in the params"]
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        path = _key_path(tuple(problem["loc"]))
        value = problem.get("input")
        shown = redact(repr(_masked(value)))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against params/README.md"
        elif problem["type"] == "union_tag_invalid":
            message = f"unknown kind; allowed: {problem.get('ctx', {}).get('expected_tags', '')}"
        lines.append(f"  {path} = {shown}: {message}")
    if len(problems) > MAX_PROBLEMS_SHOWN:
        lines.append(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more; fix these first")
    return "\n".join(lines)


MAX_PARAMS_VALUES = 100_000
"""Values (scalars, lists, mappings) a params file may hold once YAML aliases are expanded: the guard against
an alias bomb, whose few bytes expand to billions of values."""
MAX_PARAMS_DEPTH = 32


def _check_shape(data: Any, source: str) -> None:
    """Before validating: refuse data that expands past MAX_PARAMS_VALUES values, nests past MAX_PARAMS_DEPTH, or
    holds a secret-shaped string (named by its place only, never shown)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_PARAMS_VALUES:
            raise ParamsError(
                f"{source}: more than {MAX_PARAMS_VALUES:,} values (counting what YAML aliases expand to); a params "
                f"file needs a few hundred: shorten its lists, or look for aliases that repeat large blocks"
            )
        if depth > MAX_PARAMS_DEPTH:
            raise ParamsError(f"{source}: the YAML is nested more than {MAX_PARAMS_DEPTH} levels deep; params need a few")
        if isinstance(value, str) and SECRET_VALUE.search(value):
            raise ParamsError(
                f"{source}: a value looks like an API key or a private key; secrets never go in a params file: set "
                f"the variable in the environment (or .env) and name it in the deployment's secret_env"
            )
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in (*value.keys(), *value.values()))
        elif isinstance(value, list | tuple):
            stack.extend((item, depth + 1) for item in value)


def parse_params(data: Any, source: str = "<params>") -> Params:
    """Validate already-parsed YAML/JSON data; raises ParamsError naming `source`."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    _check_shape(data, source)
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, source)) from None


MAX_PARAMS_BYTES = 1_000_000


class DuplicateKey(yaml.YAMLError):
    """A mapping names the same key twice; YAML keeps the last silently, so we refuse."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                raise DuplicateKey(
                    f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line}); YAML would keep only "
                    f"the last: delete one"
                )
            if isinstance(key, str | int | float | bool):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_params_data(path: str | Path) -> Any:
    """The YAML data of a params file, comments gone and repeated keys refused (for the run's own copy)."""
    return yaml.load(Path(path).read_bytes(), Loader=_UniqueKeyLoader)  # noqa: S506 (SafeLoader underneath)


def load_params(path: str | Path) -> Params:
    """Read and validate a params YAML file; raises ParamsError with the file, key path, value and fix."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file; see params/ for examples")
    try:
        text = path.read_bytes()
    except OSError as error:
        raise ParamsError(f"{path}: cannot read the params file: {error.strerror}") from None
    if len(text) > MAX_PARAMS_BYTES:
        raise ParamsError(f"{path}: {len(text)} bytes is too large for a params file (limit {MAX_PARAMS_BYTES})")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader that refuses repeated keys)
    except DuplicateKey as error:
        raise ParamsError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    except RecursionError:
        raise ParamsError(f"{path}: the YAML is nested too deeply") from None
    return parse_params(data, str(path))


def params_stem(path: str | Path) -> str:
    return Path(path).stem
