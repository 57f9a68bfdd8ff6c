"""`run.estimate=true`: what each job would ask and cost, printed before any model call; then nothing runs.

Worked out from the configs and the samples alone (each video is only probed for its frame size):
* a query is one call, on the route the job's scheduler gives it (the scheduler decides from the query); two
  (S1 and S2) under `both`, a cascade (S2 counted as if always asked) or a policy that asks a model (`llm`);
* a proactive query polls every `system.proactive.poll_s` from its first poll to the end of its poll window,
  or of the stream, then answers once: an upper bound, since polling stops when the trigger fires;
* a text memory adds one S1 call per note (every `note_every_s` of stream played);
* a call shows S1 at most `s1.max_frames` of its window, S2 at most `s2.max_frames` of the frames so far (or
  S1's, where the memory offers none), all at the video's size after `system.max_side`.
Input tokens are the route backend's own estimate (`estimate_tokens`) of the requests the system would send;
earlier answers and text-memory notes are unknown yet, so not counted. Output tokens are each call's
max_new_tokens (an upper bound). Queries that already have a record are not asked again, so not counted. The
response cache is not consulted: calls it holds are counted, and cost nothing when the job runs. LLM-judge
calls are not included. Backends that are not API backends cost nothing and report no token count.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import av
import numpy as np

from backends.api import ApiBackend
from backends.base import BACKENDS
from harness.benchmarks.base import Benchmark
from harness.config import Job
from harness.memory.base import MEMORIES
from harness.records import Frame, Query, Request, Route, StreamSample, Turn
from harness.registry import Choice
from harness.scheduler import SCHEDULERS, Plan, Scheduler, StreamState
from harness.simulator import answer_time
from harness.system import Span

POLL_TOKENS = 4  # max_new_tokens of a proactive poll (StreamSystem.poll)


@dataclass
class RouteLoad:
    """What one route would send: calls, frames in them, and tokens."""

    backend: str  # "openai gpt-4o-2024-08-06", "reference"
    calls: int = 0
    images: int = 0
    input_tokens: int | None = 0  # None: the backend gives no estimate (not an API backend)
    output_tokens: int = 0  # max_new_tokens of every call: an upper bound
    cost_usd: float | None = 0.0  # None: an API backend without a price for its model


@dataclass
class Estimate:
    to_ask: int  # queries without a record
    recorded: int  # queries with one (not asked again)
    answers: int = 0  # answer calls: one per query (a proactive one answers at most once, after a poll)
    polls: int = 0  # upper bound
    notes: int = 0
    routes: dict[str, RouteLoad] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # videos that could not be probed: no calls counted

    @property
    def calls(self) -> int:
        return self.answers + self.polls + self.notes

    @property
    def images(self) -> int:
        return sum(r.images for r in self.routes.values())

    @property
    def input_tokens(self) -> int | None:
        counted = [r.input_tokens for r in self.routes.values() if r.input_tokens is not None]
        return sum(counted) if counted else None

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.routes.values())

    @property
    def cost_usd(self) -> float | None:
        costs = [r.cost_usd for r in self.routes.values()]
        return None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)

    def text(self, label: str) -> str:
        lines = [f"estimate for {label}: {self.to_ask} queries to ask ({self.recorded} already recorded)"]
        lines.append(
            f"  calls: up to {self.calls:,} = {self.answers:,} answers + up to {self.polls:,} proactive polls "
            f"(until each poll window or the stream ends; fewer once a trigger fires) + {self.notes:,} notes"
        )
        lines.append(f"  images: up to {self.images:,}")
        tokens = self.input_tokens
        lines.append(f"  input tokens: ~{tokens:,}" if tokens is not None else "  input tokens: n/a")
        lines.append(f"  output tokens: up to {self.output_tokens:,} (max_new_tokens of every call)")
        for route, load in sorted(self.routes.items()):
            if not load.calls:
                continue
            cost = "no price for this model" if load.cost_usd is None else f"${load.cost_usd:,.2f}"
            tokens_in = "n/a" if load.input_tokens is None else f"~{load.input_tokens:,}"
            lines.append(
                f"  {route} on {load.backend}: {load.calls:,} calls, {load.images:,} images, {tokens_in} input "
                f"tokens, up to {load.output_tokens:,} output tokens, cost up to {cost}"
            )
        cost = self.cost_usd
        lines.append(f"  cost: up to ${cost:,.2f}" if cost is not None else "  cost: unknown (a model has no price)")
        if self.unreadable:
            lines.append(f"  {len(self.unreadable)} videos could not be read (no calls counted): {self.unreadable[0]}")
        return "\n".join(lines)


def estimate_job(
    job: Job, benchmark: Benchmark, samples: Sequence[StreamSample], recorded: Collection[str]
) -> Estimate:
    """The expected load of the unrecorded queries of `samples` under `job`; nothing is called."""
    asks_model = getattr(SCHEDULERS.implementation(job.scheduler.name), "needs_backend", False)
    scheduler = None if asks_model else SCHEDULERS.build(job.scheduler)  # never a model call in an estimate
    note_every_s = MEMORIES.build(job.memory).note_every_s
    backends = {route: _estimator(choice) for route, choice in job.route_backends().items()}
    routes = {route: RouteLoad(_describe(job, route)) for route in backends}
    for route, backend in backends.items():
        if backend is None:
            routes[route].input_tokens = None
    asked = [q for s in samples for q in s.queries if q.id not in recorded]
    estimate = Estimate(len(asked), sum(len(s.queries) for s in samples) - len(asked), routes=routes)

    for sample in samples:
        pending = [q for q in sample.queries if q.id not in recorded]
        if not pending:
            continue
        frames = _frames(sample, job)
        if not frames:
            estimate.unreadable.append(sample.video)
            continue
        stream = _Stream(job, benchmark, sample, frames, backends, estimate)
        horizon = 0.0
        for query in pending:
            horizon = max(horizon, stream.query(query, scheduler))
        if note_every_s is not None:
            stream.notes(note_every_s, horizon)

    for route, load in routes.items():
        backend = backends[route]
        if backend is not None:
            load.cost_usd = backend.cost_usd(load.input_tokens or 0, load.output_tokens) if backend.priced else None
    return estimate


class _Stream:
    """One sample's calls, added to the estimate as the simulator would make them."""

    def __init__(
        self,
        job: Job,
        benchmark: Benchmark,
        sample: StreamSample,
        frames: list[Frame],
        backends: dict[str, ApiBackend | None],
        estimate: Estimate,
    ) -> None:
        self.cfg = job.system
        self.benchmark = benchmark
        self.frames = frames
        self.times = [f.time_s for f in frames]
        self.backends = backends
        self.estimate = estimate
        self.official = job.system.span == Span.official
        self.by_id = {q.id: q for q in sample.queries}

    def query(self, query: Query, scheduler: Scheduler | None) -> float:
        """Adds the query's calls; returns the stream time the simulator plays to for it."""
        now_s = answer_time(query, self.official)
        start_s = query.clip_start_s if self.official else None
        lo, hi = self._span(now_s, start_s)
        routes = _routes(scheduler, query, StreamState(now_s=now_s, memory_frames=max(0, hi - lo)))
        prompt, history = self.benchmark.prompt(query), self._history(query)
        if query.kind != "proactive" or query.trigger is None:
            for route in routes:
                self._call(route, now_s, start_s, prompt, history, self._max_new_tokens(route))
            self.estimate.answers += 1
            return now_s
        route = routes[0]
        poll_s = self.cfg.proactive.poll_s
        at = max(now_s, query.poll_window_s[0]) if query.poll_window_s is not None else now_s
        last = query.poll_window_s[1] if query.poll_window_s is not None else math.inf
        end = min(last, self.times[-1])
        polled = None
        while at <= end + 1e-6:  # ends: `at` grows by poll_s (> 0, checked at config load) up to a finite end
            self._call(route, at, start_s, query.trigger, (), POLL_TOKENS)
            self.estimate.polls += 1
            polled, at = at, round(at + poll_s, 6)
        if polled is not None:  # at most one answer: counted as if the trigger fired at the last poll
            for route in routes:
                self._call(route, polled, start_s, prompt, history, self._max_new_tokens(route))
            self.estimate.answers += 1
        return at

    def notes(self, every_s: float, horizon_s: float) -> None:
        """A text memory's captions: S1 calls on the frames observed up to the last event."""
        next_s = every_s
        for frame in self.frames:
            if frame.time_s > horizon_s + 1e-6:
                break
            if frame.time_s >= next_s:
                next_s = frame.time_s + every_s
                self._call("S1", frame.time_s, None, self.cfg.caption_prompt, (), self.cfg.s1.max_new_tokens)
                self.estimate.notes += 1

    def _call(
        self, route: Route, now_s: float, start_s: float | None, prompt: str, history: tuple[Turn, ...], tokens: int
    ) -> None:
        shown = self._shown(route, now_s, start_s)
        load, backend = self.estimate.routes[route], self.backends[route]
        load.calls += 1
        load.images += len(shown)
        load.output_tokens += tokens
        if backend is not None:
            request = Request(now_s, route, shown, prompt, history=history, max_new_tokens=tokens)
            load.input_tokens = (load.input_tokens or 0) + backend.estimate_tokens(request)

    def _span(self, now_s: float, start_s: float | None) -> tuple[int, int]:
        """Indices [lo, hi) of the frames on screen by now_s (from the official span start, where set)."""
        lo = 0 if start_s is None else bisect.bisect_left(self.times, start_s - 1e-6)
        return lo, bisect.bisect_right(self.times, now_s + 1e-6)

    def _shown(self, route: Route, now_s: float, start_s: float | None) -> tuple[Frame, ...]:
        lo, hi = self._span(now_s, start_s)
        if hi <= lo:
            return ()
        # S1's window, as StreamSystem keeps it: frames no older than window_s before the latest one
        window = max(lo, bisect.bisect_left(self.times, self.times[hi - 1] - self.cfg.s1.window_s))
        recent = max(window, hi - self.cfg.s1.max_frames)
        if route == "S1":
            return tuple(self.frames[recent:hi])
        count = max(hi - recent, min(self.cfg.s2.max_frames, hi - lo))  # an upper bound for any memory
        return tuple(self.frames[hi - count : hi])

    def _history(self, query: Query) -> tuple[Turn, ...]:
        turns, seen, follows = [], set(), query.follows
        while follows is not None and follows in self.by_id and follows not in seen:
            seen.add(follows)
            earlier = self.by_id[follows]
            turns.append(Turn(self.benchmark.prompt(earlier), ""))  # its answer is unknown yet
            follows = earlier.follows
        return tuple(reversed(turns))

    def _max_new_tokens(self, route: Route) -> int:
        return self.cfg.s1.max_new_tokens if route == "S1" else self.cfg.s2.max_new_tokens


def _frames(sample: StreamSample, job: Job) -> list[Frame] | None:
    """The sampled stream's frames, with their times and size (one shared black picture); None (or none) if the
    video cannot be opened. Only the container's header is read: size, first and last frame time."""
    try:
        with av.open(str(sample.video)) as container:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            first_s, last_s = _span_s(stream, sample.duration_s)
    except (av.FFmpegError, IndexError, OSError):
        return None
    side = job.system.max_side
    if side > 0 and max(width, height) > side:
        scale = side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    pixels = np.zeros((height, width, 3), np.uint8)
    fps = job.system.fps
    first = math.ceil(first_s * fps - 1e-6)  # as harness.video.sample_frames: from the first frame on screen
    return [Frame(k, round(k / fps, 6), pixels) for k in range(first, math.floor(last_s * fps + 1e-6) + 1)]


def _span_s(stream: av.video.stream.VideoStream, duration_s: float) -> tuple[float, float]:
    """(first, last) presentation time of the video's frames, from its header (the dataset's duration if unknown)."""
    first_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    rate = float(stream.average_rate) if stream.average_rate else 0.0
    if stream.duration and rate:
        return first_s, first_s + float(stream.duration * stream.time_base) - 1 / rate
    if stream.frames and rate:
        return first_s, first_s + (stream.frames - 1) / rate
    return first_s, duration_s


def _estimator(choice: Choice) -> ApiBackend | None:
    """An API backend without key or client, for its token estimate and prices; None for any other backend."""
    implementation = BACKENDS.implementation(choice.name)
    if isinstance(implementation, type) and issubclass(implementation, ApiBackend):
        return implementation.offline(choice.config)
    return None


def _describe(job: Job, route: str) -> str:
    choice = job.route_backends()[route]
    model = getattr(choice.config, "model", None)
    return f"{choice.name} {model}" if model else choice.name


def _routes(scheduler: Scheduler | None, query: Query, state: StreamState) -> tuple[Route, ...]:
    """The routes that may answer `query`: an upper bound where only a reply decides (a cascade's S2, or the
    route a model-asking policy picks (None here), which the estimate does not ask; its own short calls are not
    counted)."""
    if scheduler is None:
        return ("S1", "S2")
    decision = asyncio.run(scheduler.route(query, state))
    return (decision.route,) if decision.plan == Plan.one else ("S1", "S2")
