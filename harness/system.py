"""The dual system of one stream: S1 answers from the recent window, S2 from memory via a router.

A `StreamSystem` holds everything that belongs to one stream (recent frames, memory, frame
tokens, its own earlier answers) and talks to the shared backend, scheduler and router of the job.
S2 is shown the frames the memory expands the router's choice into, plus the text memory's notes
that match the query; a memory that offers no frames leaves S2 with what S1 sees.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from backends.base import Backend
from harness.benchmarks.base import Benchmark
from harness.budget import BudgetExhausted
from harness.embedding_cache import StreamTokens
from harness.memory.base import Memory, MemoryUsage, Note
from harness.records import Frame, Query, Request, Response, Route, Turn
from harness.routers.base import Router
from harness.scheduler import Decision, Scheduler, StreamState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class S1Config:
    window_s: float = 4.0  # S1 sees the frames of the last window_s seconds
    max_frames: int = 8
    max_new_tokens: int = 32
    backend: Any = None  # a backend node of its own (`backend@system.s1.backend=hf`); None: the job's backend


@dataclass(frozen=True)
class S2Config:
    max_frames: int = 16  # the router picks up to this many frames from memory
    max_new_tokens: int = 64
    backend: Any = None  # as for S1


@dataclass(frozen=True)
class ProactiveConfig:
    poll_s: float = 1.0  # a proactive query's trigger question is asked this often


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


@dataclass
class Usage:
    """Sum over the backend calls made for one query."""

    n_calls: int = 0
    latency_s: float = 0.0
    modelled_latency_s: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    visual_tokens: int = 0
    ttft_s: float | None = None  # of the latest call: the answering one once the query is answered
    cost_usd: float = 0.0
    cached_calls: int = 0  # served from the response cache

    def add(self, response: Response) -> None:
        self.n_calls += 1
        self.latency_s += response.latency_s
        self.tokens_in += response.tokens_in
        self.tokens_out += response.tokens_out
        self.visual_tokens += response.visual_tokens
        self.ttft_s = response.ttft_s
        self.cost_usd += response.cost_usd
        self.cached_calls += response.cached
        if response.modelled_latency_s is not None:
            self.modelled_latency_s = (self.modelled_latency_s or 0.0) + response.modelled_latency_s


@dataclass
class Answer:
    """What the system produced for one query (before parsing and scoring)."""

    decision: Decision
    text: str | None  # None: a proactive query whose trigger never fired
    frame_times_s: tuple[float, ...]
    usage: Usage
    memory: MemoryUsage
    response_time_s: float | None = None


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
        self.notes = Usage()  # calls S1 made to write text-memory notes

    async def observe(self, frame: Frame) -> None:
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

    def decide(self, query: Query, now_s: float) -> Decision:
        state = StreamState(now_s=now_s, memory_frames=self._memory.usage().frames)
        return self._scheduler.route(query, state)

    async def ask(self, query: Query, decision: Decision, now_s: float, usage: Usage) -> Answer:
        """Answer `query` at stream time now_s on the decided route."""
        frames, context = await self._inputs(query, decision.route, now_s)
        request = Request(
            time_s=now_s,
            route=decision.route,
            frames=frames,
            prompt=self._benchmark.prompt(query),
            history=self._history(query),
            context=context,
            max_new_tokens=self._max_new_tokens(decision.route),
        )
        response = await self._backends[decision.route].generate(request)
        usage.add(response)
        self.remember(query, response.text)
        return Answer(decision, response.text, tuple(f.time_s for f in frames), usage, self._memory.usage())

    async def poll(self, query: Query, decision: Decision, now_s: float, usage: Usage) -> bool:
        """Ask a proactive query's trigger question; True when the system says "now"."""
        assert query.trigger is not None
        frames, context = await self._inputs(query, decision.route, now_s)
        request = Request(now_s, decision.route, frames, query.trigger, context=context, max_new_tokens=4)
        response = await self._backends[decision.route].generate(request)
        usage.add(response)
        return self._benchmark.fired(response.text)

    def memory_usage(self) -> MemoryUsage:
        return self._memory.usage()

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
            response = await self._backends["S1"].generate(request)
        except BudgetExhausted:
            raise  # not a lost note: the stream stops here (the simulator's rule)
        except Exception as e:  # a lost note costs the memory one entry, not the stream
            log.warning("text memory: no note at %.1f s (%s: %s)", now_s, type(e).__name__, e)
            return
        self.notes.add(response)
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
        return self.cfg.s1.max_new_tokens if route == "S1" else self.cfg.s2.max_new_tokens
