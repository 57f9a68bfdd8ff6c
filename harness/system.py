"""The dual system of one stream: S1 answers from the recent window, S2 from memory via a router.

A `StreamSystem` holds everything that belongs to one stream (recent frames, memory, frame
tokens, its own earlier answers) and talks to the shared backend, scheduler and router of the job.
S2 is shown the frames the memory expands the router's choice into, plus the text memory's notes
that match the query; a memory that offers no frames leaves S2 with what S1 sees.
The scheduler's decision is a plan (harness/scheduler.py): one route, both routes, or S1 with S2 when
S1 is unsure (cascade). Every model call adds its latency (measured, or modelled with
`system.latency=modelled`) to `compute_s`, the clock a realtime simulation charges the stream for.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any

import cv2
import numpy as np

from backends.base import Backend
from harness.benchmarks.base import Benchmark
from harness.budget import BudgetExhausted
from harness.embedding_cache import StreamTokens
from harness.errors import ConfigError
from harness.memory.base import Memory, MemoryUsage, Note
from harness.records import Frame, Query, Request, Response, Route, Turn
from harness.routers.base import Router
from harness.scheduler import Decision, Plan, Scheduler, StreamState

log = logging.getLogger(__name__)


SCENE_CHANGE = 0.12  # mean absolute change of a 16x16 grey thumbnail (0..1) that counts as a scene change
_CONFIDENCE_LINE = re.compile(r"^\s*confidence\s*[:=]\s*(\d+(?:\.\d+)?)\s*%?\s*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class LatencyModel:
    """A deployment's cost of one call, so a CPU run can emulate a GPU one (`system.latency=modelled`)."""

    base_s: float = 0.0
    per_frame_s: float = 0.0
    per_visual_token_s: float = 0.0
    per_output_token_s: float = 0.0

    @classmethod
    def parse(cls, node: Mapping[str, float] | None, where: str) -> LatencyModel | None:
        """`system.<route>.latency_model` ({base_s: 0.4, per_output_token_s: 0.02}, null: none)."""
        if node is None:
            return None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**{k: float(v) for k, v in node.items()})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: seconds must be numbers ({e})") from None

    def seconds(self, frames: int, response: Response) -> float:
        return (
            self.base_s
            + self.per_frame_s * frames
            + self.per_visual_token_s * response.visual_tokens
            + self.per_output_token_s * response.tokens_out
        )


@dataclass(frozen=True)
class S1Config:
    window_s: float = 4.0  # S1 sees the frames of the last window_s seconds
    max_frames: int = 8
    max_new_tokens: int = 32
    backend: Any = None  # a backend node of its own (`backend@system.s1.backend=hf`); None: the job's backend
    # a LatencyModel's fields ({base_s: 0.4, per_output_token_s: 0.02}; a plain node, as OmegaConf cannot merge
    # into a null dataclass); None: the backend's own model, where it has one (reference)
    latency_model: Any = None


@dataclass(frozen=True)
class S2Config:
    max_frames: int = 16  # the router picks up to this many frames from memory
    max_new_tokens: int = 64
    backend: Any = None  # as for S1
    latency_model: Any = None  # as for S1


@dataclass(frozen=True)
class ProactiveConfig:
    poll_s: float = 1.0  # a proactive query's trigger question is asked this often


class BusyPolicy(str, Enum):
    queue = "queue"  # frames arriving while a path computes are ingested when it frees
    drop = "drop"  # ... are lost: neither memory nor the recent window ever sees them


class LatencySource(str, Enum):
    measured = "measured"  # the calls' wall time on this machine
    modelled = "modelled"  # the route's latency model (or the backend's): emulates another deployment


class Span(str, Enum):
    query = "query"  # frames up to the query time: the streaming invariant
    official = "official"  # frames up to the benchmark's official clip end (Query.clip_end_s), as its scripts cut


@dataclass(frozen=True)
class SystemConfig:
    name: str = "default"
    fps: float = 2.0  # stream sampling rate: frames the system receives per second of video
    max_side: int = 320  # frames are resized so that their longer side is at most this
    span: Span = Span.query  # which frames a query may see (official: the benchmark's own clip end)
    s1: S1Config = field(default_factory=S1Config)
    s2: S2Config = field(default_factory=S2Config)
    proactive: ProactiveConfig = field(default_factory=ProactiveConfig)
    caption_prompt: str = "Describe what is on screen now in one sentence."  # S1's notes for a text memory
    # realtime: the stream does not wait for the model. An answer is out at (start + latency), a query or poll
    # arriving while the system computes starts when it frees, and frames arriving meanwhile follow busy_policy
    realtime: bool = False
    busy_policy: BusyPolicy = BusyPolicy.queue
    latency: LatencySource = LatencySource.measured  # which latency the realtime clock charges


@dataclass
class Usage:
    """Sum over the backend calls of one path (a route, or the scheduler's own calls) for one query."""

    n_calls: int = 0
    latency_s: float = 0.0
    modelled_latency_s: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    visual_tokens: int = 0
    ttft_s: float | None = None  # of the latest call: the answering one once the query is answered
    cost_usd: float = 0.0
    cached_calls: int = 0  # served from the response cache

    def add(self, response: Response, modelled_s: float | None = None) -> None:
        self.n_calls += 1
        self.latency_s += response.latency_s
        self.tokens_in += response.tokens_in
        self.tokens_out += response.tokens_out
        self.visual_tokens += response.visual_tokens
        self.ttft_s = response.ttft_s
        self.cost_usd += response.cost_usd
        self.cached_calls += response.cached
        modelled_s = response.modelled_latency_s if modelled_s is None else modelled_s
        if modelled_s is not None:
            self.modelled_latency_s = (self.modelled_latency_s or 0.0) + modelled_s

    def merge(self, other: Usage) -> None:
        """Adds another path's sums (the record's totals are the sum over its paths)."""
        self.n_calls += other.n_calls
        self.latency_s += other.latency_s
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.visual_tokens += other.visual_tokens
        self.cost_usd += other.cost_usd
        self.cached_calls += other.cached_calls
        if other.ttft_s is not None:
            self.ttft_s = other.ttft_s
        if other.modelled_latency_s is not None:
            self.modelled_latency_s = (self.modelled_latency_s or 0.0) + other.modelled_latency_s


@dataclass
class PathAnswer:
    """One route's answer to a query, with what it cost."""

    text: str | None  # None: a proactive query whose trigger never fired on this route
    frame_times_s: tuple[float, ...] = ()
    usage: Usage = field(default_factory=Usage)
    confidence: float | None = None  # asked for by a cascade (or recorded by `both` where free)
    polls: Usage | None = None  # a proactive query's trigger polls on this route (included in `usage`)
    response_time_s: float | None = None  # proactive: stream time of the answer
    answered_at_s: float | None = None  # realtime: stream time the answer was out


@dataclass
class Answer:
    """What the system produced for one query (before parsing and scoring): the kept route's answer and the
    others' (`both`, an escalated cascade), and the scheduler's own calls."""

    decision: Decision  # final: an escalated cascade says S2
    paths: dict[Route, PathAnswer]
    memory: MemoryUsage
    features: dict[str, float | None] = field(default_factory=dict)
    scheduler: Usage = field(default_factory=Usage)

    @property
    def kept(self) -> PathAnswer:
        return self.paths[self.decision.route]

    @property
    def text(self) -> str | None:
        return self.kept.text

    @property
    def frame_times_s(self) -> tuple[float, ...]:
        return self.kept.frame_times_s

    @property
    def response_time_s(self) -> float | None:
        return self.kept.response_time_s

    @property
    def answered_at_s(self) -> float | None:
        return self.kept.answered_at_s

    @property
    def usage(self) -> Usage:
        total = _sum(self.scheduler, *(p.usage for p in self.paths.values()))
        total.ttft_s = self.kept.usage.ttft_s
        return total


class StreamSystem:
    def __init__(
        self,
        cfg: SystemConfig,
        backends: Mapping[Route, Backend],
        scheduler: Scheduler,
        router: Router,
        memory: Memory,
        benchmark: Benchmark,
        tokens: StreamTokens | None = None,
    ) -> None:
        self.cfg = cfg
        self._backends = backends  # one per route; the same object where both routes share a backend
        self._scheduler = scheduler
        self._router = router
        self._memory = memory
        self._benchmark = benchmark
        self._tokens = tokens  # None when neither router nor memory needs embeddings
        self._recent: deque[Frame] = deque()
        self._answers: dict[str, Turn] = {}  # query id -> (prompt, own answer)
        self._follows: dict[str, str | None] = {}  # query id -> the query it refers to
        self._next_note_s = memory.note_every_s
        self._thumbnail: np.ndarray | None = None
        self._scene_change_s: float | None = None
        self.notes = Usage()  # calls S1 made to write text-memory notes
        self.compute_s = 0.0  # latency of every call so far (cfg.latency): what realtime charges
        self._latency_models = {r: latency_model(cfg, r) for r in ("S1", "S2")}

    async def observe(self, frame: Frame) -> None:
        self._see_scene(frame)
        tokens = await self._tokens.frame(frame) if self._tokens is not None else None
        self._memory.ingest(frame, tokens)
        self._recent.append(frame)
        while self._recent and self._recent[0].time_s < frame.time_s - self.cfg.s1.window_s:
            self._recent.popleft()
        if self._next_note_s is not None and frame.time_s >= self._next_note_s:
            self._next_note_s = frame.time_s + (self._memory.note_every_s or 0.0)
            await self._write_note(frame.time_s)

    def remember(self, query: Query, answer: str) -> None:
        """Record the system's own answer (also one restored from an earlier run's record)."""
        self._answers[query.id] = Turn(self._benchmark.prompt(query), answer)
        self._follows[query.id] = query.follows

    async def decide(self, query: Query, now_s: float) -> tuple[Decision, dict[str, float | None]]:
        """The scheduler's plan for `query`, and the stream features it was given (kept in the record)."""
        since = None if self._scene_change_s is None else round(now_s - self._scene_change_s, 6)
        state = StreamState(now_s=now_s, memory_frames=self._memory.usage().frames, since_scene_change_s=since)
        decision = await self._scheduler.route(query, state)
        for response in decision.calls:  # the policy's own model calls take compute time too
            measured = self.cfg.latency == LatencySource.measured
            self.compute_s += response.latency_s if measured else (response.modelled_latency_s or 0.0)
        return decision, state.features()

    def scheduler_usage(self, decision: Decision) -> Usage:
        usage = Usage()
        for response in decision.calls:
            usage.add(response)
        return usage

    async def answer(
        self,
        query: Query,
        decision: Decision,
        now_s: float,
        polled: Mapping[Route, Usage] | None = None,
        both: tuple[Route, ...] = ("S1", "S2"),
    ) -> tuple[Decision, dict[Route, PathAnswer]]:
        """Answer `query` at stream time now_s on the decision's plan; returns the final decision (an escalated
        cascade says S2) and each route's answer. `polled`: a proactive query's poll calls so far, by route;
        `both`: the routes of a `both` plan to ask now (a proactive query's routes fire at their own times)."""
        polled = polled or {}
        if decision.plan == Plan.both:
            paths = {r: await self._ask(query, r, now_s, want_confidence=True) for r in both}
        elif decision.plan == Plan.cascade:
            first = await self._ask(query, "S1", now_s, confidence_prompt=decision.confidence_prompt or None)
            paths = {"S1": first}
            confidence, threshold = first.confidence, decision.threshold or 0.0
            shown = "unstated" if confidence is None else f"{confidence:.2f}"
            if confidence is not None and confidence >= threshold:
                reason = f"cascade: S1 confidence {shown} >= {threshold:g}"
                decision = replace(decision, reason=reason, score=confidence)
            else:
                paths["S2"] = await self._ask(query, "S2", now_s)
                reason = f"cascade: S1 confidence {shown} < {threshold:g}, S2 answered"
                decision = replace(decision, route="S2", reason=reason, score=confidence)
        else:
            paths = {decision.route: await self._ask(query, decision.route, now_s)}
        for route, path in paths.items():  # a proactive query's polls belong to its route's usage
            if route in polled:
                path.polls, path.usage = polled[route], _sum(polled[route], path.usage)
        kept = paths.get(decision.route)
        if kept is not None and kept.text is not None:
            self.remember(query, kept.text)
        return decision, paths

    async def poll(self, query: Query, route: Route, now_s: float, usage: Usage) -> bool:
        """Ask a proactive query's trigger question on `route`; True when the system says "now"."""
        assert query.trigger is not None
        frames, context = await self._inputs(query, route, now_s)
        request = Request(now_s, route, frames, query.trigger, context=context, max_new_tokens=4)
        response = await self._call(route, request, usage)
        return self._benchmark.fired(response.text)

    def memory_usage(self) -> MemoryUsage:
        return self._memory.usage()

    async def _ask(
        self,
        query: Query,
        route: Route,
        now_s: float,
        confidence_prompt: str | None = None,
        want_confidence: bool = False,
    ) -> PathAnswer:
        """One route's answer. `confidence_prompt`: a cascade's S1, which needs a confidence: the backend's own
        where it gives one, else the model is asked to state it (read from, then cut off, its reply)."""
        usage = Usage()
        frames, context = await self._inputs(query, route, now_s)
        backend = self._backends[route]
        gives = getattr(backend, "gives_confidence", False)
        prompt = self._benchmark.prompt(query)
        if confidence_prompt is not None and not gives:
            prompt = f"{prompt}\n{confidence_prompt}"
        request = Request(
            time_s=now_s,
            route=route,
            frames=frames,
            prompt=prompt,
            history=self._history(query),
            context=context,
            max_new_tokens=self._max_new_tokens(route),
            want_confidence=gives and (want_confidence or confidence_prompt is not None),
        )
        response = await self._call(route, request, usage)
        text, confidence = response.text, response.confidence
        if confidence_prompt is not None and not gives:
            text, confidence = stated_confidence(text)
        return PathAnswer(text, tuple(f.time_s for f in frames), usage, confidence)

    async def _call(self, route: Route, request: Request, usage: Usage) -> Response:
        """Every model call of the system: counted in `usage` and charged to the realtime clock."""
        response = await self._backends[route].generate(request)
        latency_model = self._latency_models[route]
        modelled = latency_model.seconds(len(request.frames), response) if latency_model is not None else None
        usage.add(response, modelled)
        if self.cfg.latency == LatencySource.measured:
            self.compute_s += response.latency_s
        else:
            modelled = response.modelled_latency_s if modelled is None else modelled
            if modelled is None:
                raise ConfigError(
                    f"system.latency=modelled: the {route} backend has no latency model; set "
                    f"system.{route.lower()}.latency_model.{{base_s,per_frame_s,per_visual_token_s,per_output_token_s}}"
                )
            self.compute_s += modelled
        return response

    async def _inputs(self, query: Query, route: Route, now_s: float) -> tuple[tuple[Frame, ...], tuple[str, ...]]:
        """The frames (and text memory) a route shows the model for `query` at now_s."""
        start_s = query.clip_start_s if self.cfg.span == Span.official and query.clip_start_s is not None else None
        recent = tuple(f for f in self._recent if f.time_s <= now_s and (start_s is None or f.time_s >= start_s - 1e-6))
        recent = recent[-self.cfg.s1.max_frames :]
        if route == "S1":
            return recent, ()
        view = self._memory.view(now_s, query.text)
        if start_s is not None:
            view = view.since(start_s)
        query_tokens = None
        if self._router.needs_tokens and self._tokens is not None:
            # the whole prompt, options included, as the key-frame router design does: "which of these appeared
            # first?" names its objects only in the options (reasoning 72 -> 89% with cos_sim_fine)
            query_tokens = await self._tokens.text(self._benchmark.prompt(query))
        choice = self._router.select(query_tokens, view, self.cfg.s2.max_frames)
        frames = self._memory.expand(view, choice, self.cfg.s2.max_frames) or recent
        return frames, tuple(f"[{n.time_s:.1f} s] {n.text}" for n in view.notes)

    async def _write_note(self, now_s: float) -> None:
        recent = tuple(self._recent)[-self.cfg.s1.max_frames :]
        request = Request(now_s, "S1", recent, self.cfg.caption_prompt, max_new_tokens=self.cfg.s1.max_new_tokens)
        try:
            response = await self._call("S1", request, self.notes)
        except (BudgetExhausted, ConfigError):
            raise  # not a lost note: the stream stops here (the simulator's rule)
        except Exception as e:  # a lost note costs the memory one entry, not the stream
            log.warning("text memory: no note at %.1f s (%s: %s)", now_s, type(e).__name__, e)
            return
        self._memory.add_note(Note(now_s, response.text))

    def _history(self, query: Query) -> tuple[Turn, ...]:
        """The chain of earlier turns this query refers to, oldest first."""
        turns: list[Turn] = []
        seen: set[str] = set()
        follows = query.follows
        while follows is not None and follows in self._answers and follows not in seen:
            seen.add(follows)
            turns.append(self._answers[follows])
            follows = self._follows.get(follows)
        return tuple(reversed(turns))

    def _max_new_tokens(self, route: Route) -> int:
        return self._route_cfg(route).max_new_tokens

    def _route_cfg(self, route: Route) -> S1Config | S2Config:
        return self.cfg.s1 if route == "S1" else self.cfg.s2

    def _see_scene(self, frame: Frame) -> None:
        """Notes when the picture changes a lot (a cut): `since_scene_change_s` is a scheduler feature."""
        grey = cv2.cvtColor(np.ascontiguousarray(frame.pixels), cv2.COLOR_RGB2GRAY)
        thumbnail = cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        if self._thumbnail is not None and float(np.abs(thumbnail - self._thumbnail).mean()) > SCENE_CHANGE:
            self._scene_change_s = frame.time_s
        self._thumbnail = thumbnail


def _sum(*usages: Usage) -> Usage:
    total = Usage()
    for usage in usages:
        total.merge(usage)
    return total


def latency_model(cfg: SystemConfig, route: Route) -> LatencyModel | None:
    """A route's configured latency model (checked at config load through this same function)."""
    key = route.lower()
    return LatencyModel.parse(getattr(cfg, key).latency_model, f"system.{key}.latency_model")


def stated_confidence(text: str) -> tuple[str, float | None]:
    """A reply's own 'Confidence: N' line (0..100), read and removed; None where the model gave none."""
    found = list(_CONFIDENCE_LINE.finditer(text))
    if not found:
        return text, None
    last = found[-1]
    value = float(last[1])
    confidence = min(1.0, value / 100.0) if value > 1.0 else value  # "0.8" and "80" both mean 80 %
    return (text[: last.start()] + text[last.end() :]).strip(), confidence
