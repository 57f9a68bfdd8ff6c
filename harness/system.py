"""The dual system of one stream: S1 answers from the recent window, S2 from memory via a router.

A `StreamSystem` holds everything that belongs to one stream (recent frames, memory, its own
earlier answers) and talks to the shared backend, scheduler and router of the job.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from backends.base import Backend
from harness.benchmarks.base import Benchmark
from harness.memory.base import Memory
from harness.records import Frame, Query, Request, Response, Route, Turn
from harness.routers.base import Router
from harness.scheduler import Decision, Scheduler, StreamState


@dataclass(frozen=True)
class S1Config:
    window_s: float = 4.0  # S1 sees the frames of the last window_s seconds
    max_frames: int = 8
    max_new_tokens: int = 32


@dataclass(frozen=True)
class S2Config:
    max_frames: int = 16  # the router picks up to this many frames from memory
    max_new_tokens: int = 64


@dataclass(frozen=True)
class ProactiveConfig:
    poll_s: float = 1.0  # a proactive query's trigger question is asked this often


@dataclass(frozen=True)
class SystemConfig:
    name: str = "default"
    fps: float = 2.0  # stream sampling rate: frames the system receives per second of video
    max_side: int = 320  # frames are resized so that their longer side is at most this
    s1: S1Config = field(default_factory=S1Config)
    s2: S2Config = field(default_factory=S2Config)
    proactive: ProactiveConfig = field(default_factory=ProactiveConfig)


@dataclass
class Usage:
    """Sum over the backend calls made for one query."""

    n_calls: int = 0
    latency_s: float = 0.0
    modelled_latency_s: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0

    def add(self, response: Response) -> None:
        self.n_calls += 1
        self.latency_s += response.latency_s
        self.tokens_in += response.tokens_in
        self.tokens_out += response.tokens_out
        self.cost_usd += response.cost_usd
        if response.modelled_latency_s is not None:
            self.modelled_latency_s = (self.modelled_latency_s or 0.0) + response.modelled_latency_s


@dataclass
class Answer:
    """What the system produced for one query (before parsing and scoring)."""

    decision: Decision
    text: str | None  # None: a proactive query whose trigger never fired
    frame_times_s: tuple[float, ...]
    usage: Usage
    response_time_s: float | None = None


class StreamSystem:
    def __init__(
        self,
        cfg: SystemConfig,
        backend: Backend,
        scheduler: Scheduler,
        router: Router,
        memory: Memory,
        benchmark: Benchmark,
    ) -> None:
        self.cfg = cfg
        self._backend = backend
        self._scheduler = scheduler
        self._router = router
        self._memory = memory
        self._benchmark = benchmark
        self._recent: deque[Frame] = deque()
        self._answers: dict[str, Turn] = {}  # query id -> (prompt, own answer)
        self._follows: dict[str, str | None] = {}  # query id -> the query it refers to

    def observe(self, frame: Frame) -> None:
        self._memory.ingest(frame)
        self._recent.append(frame)
        while self._recent and self._recent[0].time_s < frame.time_s - self.cfg.s1.window_s:
            self._recent.popleft()

    def remember(self, query: Query, answer: str) -> None:
        """Record the system's own answer (also one restored from an earlier run's record)."""
        self._answers[query.id] = Turn(self._benchmark.prompt(query), answer)
        self._follows[query.id] = query.follows

    def decide(self, query: Query, now_s: float) -> Decision:
        state = StreamState(now_s=now_s, memory_frames=len(self._memory.view(now_s).frames))
        return self._scheduler.route(query, state)

    async def ask(self, query: Query, decision: Decision, now_s: float, usage: Usage) -> Answer:
        """Answer `query` at stream time now_s on the decided route."""
        frames = self._frames(query, decision.route, now_s)
        request = Request(
            time_s=now_s,
            route=decision.route,
            frames=frames,
            prompt=self._benchmark.prompt(query),
            history=self._history(query),
            max_new_tokens=self._max_new_tokens(decision.route),
        )
        response = await self._backend.generate(request)
        usage.add(response)
        self.remember(query, response.text)
        return Answer(decision, response.text, tuple(f.time_s for f in frames), usage)

    async def poll(self, query: Query, decision: Decision, now_s: float, usage: Usage) -> bool:
        """Ask a proactive query's trigger question; True when the system says "now"."""
        assert query.trigger is not None
        frames = self._frames(query, decision.route, now_s)
        request = Request(now_s, decision.route, frames, query.trigger, (), max_new_tokens=4)
        response = await self._backend.generate(request)
        usage.add(response)
        return self._benchmark.fired(response.text)

    def _frames(self, query: Query, route: Route, now_s: float) -> tuple[Frame, ...]:
        if route == "S1":
            recent = [f for f in self._recent if f.time_s <= now_s]
            return tuple(recent[-self.cfg.s1.max_frames :])
        view = self._memory.view(now_s)
        choice = self._router.select(query, view, self.cfg.s2.max_frames)
        return tuple(view.frames[i] for i in sorted(choice.indices))

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
