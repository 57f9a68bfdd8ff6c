"""Values that flow through one job. Frozen: a stage never edits what an earlier stage produced.

Ground truth lives in `Truth`, beside `Query` rather than inside it, so a system that is handed a
`Query` cannot read the answer (invariant 1 is a property of the types).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

QueryKind = Literal["mcq", "open", "count", "yes_no", "proactive"]
Route = Literal["S1", "S2"]
RECORD_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Query:
    """A question asked at time_s. Carries nothing a system must not see."""

    id: str
    time_s: float
    text: str
    task: str  # task family, e.g. "realtime"; a rule scheduler may route on it
    kind: QueryKind
    options: tuple[str, ...] = ()
    follows: str | None = None  # id of the earlier query of the stream this one refers to
    trigger: str | None = None  # proactive: the yes/no question polled until it fires
    # end of the benchmark's official visible span (e.g. OVO-Bench's ceil(t), capped at the video's
    # duration); None: the query time. Only `system.span=official` shows frames up to it.
    clip_end_s: float | None = None
    # start of the official visible span (StreamingBench: max(0, t - 60), proactive: the instruction time);
    # None: the stream start. Only `system.span=official` drops the frames before it.
    clip_start_s: float | None = None
    # proactive: (first, last) poll time of the official protocol (StreamingBench: s + 1 .. g + 4);
    # None: poll from the query time until the stream ends
    poll_window_s: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class Truth:
    """What only the scorer and analysis read."""

    query_id: str
    answer: str
    evidence_s: tuple[float, ...] = ()  # when the evidence is on screen (analysis, router training)
    window_s: tuple[float, float] | None = None  # proactive: when a response counts


@dataclass(frozen=True, slots=True)
class StreamSample:
    """One video played as a stream, with the queries asked while it plays."""

    id: str
    video: str  # path of the video file
    duration_s: float
    queries: tuple[Query, ...]
    truths: Mapping[str, Truth]  # by query id
    extras: Mapping[str, Any] = field(default_factory=dict)  # read only by its own adapter


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame of the stream: the picture on screen at time_s."""

    index: int  # position in the sampled stream (0, 1, 2, ... at the stream fps)
    time_s: float
    pixels: np.ndarray  # H x W x 3, uint8, RGB


@dataclass(frozen=True, slots=True)
class Turn:
    """An earlier question of the stream and the system's own answer to it."""

    question: str
    answer: str


@dataclass(frozen=True, slots=True)
class Request:
    """What a backend gets: frames in time order, the prompt, earlier turns, generation limits."""

    time_s: float  # the stream clock; every frame has time_s <= this
    route: Route
    frames: tuple[Frame, ...]
    prompt: str
    history: tuple[Turn, ...] = ()
    context: tuple[str, ...] = ()  # text memory shown with the frames, e.g. "[12.0 s] A red circle."
    max_new_tokens: int = 32
    system: str = ""  # a system instruction, for backends that take one (judges use it)
    want_confidence: bool = False  # cascade: the backend should set Response.confidence where it can


@dataclass(frozen=True, slots=True)
class Response:
    """What a backend returns for one call."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0  # measured wall time of the call
    modelled_latency_s: float | None = None  # the backend's latency model, where it has one
    finish_reason: str = "stop"
    cost_usd: float = 0.0
    visual_tokens: int = 0  # tokens the frames became in the model's input, where the backend knows
    ttft_s: float | None = None  # time to first token, where the backend measures it
    cached: bool = False  # served from the response cache: nothing was asked or paid this time
    # the model's confidence in this reply, 0..1 (exp of the mean token log-probability), where the backend
    # gives one and the request asked for it (`want_confidence`); None: a cascade asks the model to say it
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One JSONL line per query; with the job's config.yaml it is all analysis needs."""

    schema: int
    config_hash: str
    sample_id: str
    query_id: str
    task: str
    kind: str
    time_s: float  # when the query was asked
    span_end_s: float | None = None  # frames shown end here when the official span (not time_s) was used
    span_start_s: float | None = None  # ... and start here when the official span has a start (StreamingBench)
    # the defaults below are what an error record holds: nothing was answered
    route: Route | None = None  # None when the query failed before it was routed
    route_reason: str = ""
    route_score: float | None = None  # the number behind the choice (similarity gap, P(S2), S1's confidence)
    policy: str = ""  # the scheduler that decided (force_s1, rule, semantic, classifier, llm, cascade, both)
    question: str = ""  # the query's text (misroute examples, scheduler training)
    features: Mapping[str, float | None] = field(default_factory=dict)  # stream state the scheduler saw
    # per path: "scheduler" (a policy's own model calls) and each route that answered ("S1", "S2"): usage
    # (n_calls, latency_s, modelled_latency_s, tokens_in, tokens_out, visual_tokens, cost_usd, cached_calls) and,
    # for routes, the answer (response, parsed, score, confidence, response_time_s); the top-level fields are
    # the kept route's answer and the sum over paths
    paths: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    answered_at_s: float | None = None  # system.realtime: stream time the answer was out (asked + wait + latency)
    frame_times_s: tuple[float, ...] = ()  # what the model saw for the answer: provenance, leakage check
    response: str | None = None  # raw text of the answering call
    parsed: str | None = None
    score: float | None = None  # None only for error records
    latency_s: float = 0.0  # measured wall time of all calls for this query
    modelled_latency_s: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    visual_tokens: int = 0  # of all calls for this query
    ttft_s: float | None = None  # time to first token of the answering call, where the backend measures it
    n_calls: int = 0  # backend calls made (proactive polls included)
    cached_calls: int = 0  # of those, served from the response cache (not paid by the run that wrote this)
    cost_usd: float = 0.0  # the calls' price at the configured list prices, cached ones included
    response_time_s: float | None = None  # stream time of the answer (proactive)
    subscores: Mapping[str, float] = field(default_factory=dict)
    memory_frames: int = 0  # what the stream's memory held when the query was answered
    memory_tokens: int = 0
    memory_bytes: int = 0
    memory_notes: int = 0
    audio: bool = False  # whether the model was given the video's audio (omni-source tasks); frames only if false
    judge_outputs: Mapping[str, str] = field(default_factory=dict)  # LLM-judged benchmarks: raw judge output per prompt
    judge_failed: tuple[str, ...] = ()  # judge prompts whose output could not be read (counted, never guessed)
    error: str | None = None

    @property
    def has_error(self) -> bool:
        return self.error is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> ResultRecord:
        data = json.loads(line)
        data = {k: v for k, v in data.items() if k in _RECORD_FIELDS}
        data["frame_times_s"] = tuple(data["frame_times_s"])
        data["judge_failed"] = tuple(data.get("judge_failed", ()))
        return cls(**data)


_RECORD_FIELDS = frozenset(f.name for f in fields(ResultRecord))  # once: 100k records read 10 s faster
