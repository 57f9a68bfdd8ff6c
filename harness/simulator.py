"""The stream clock: frame events and query events of one sample, in time order.

A frame is observed before a query asked at the same instant (it is on screen then). Proactive
queries become poll events every `poll_s` seconds until the trigger fires or the stream ends (or
within the query's official poll window, where it has one).
Every query ends in exactly one outcome: an `Answer`, or the exception that stopped it; except when the
job's budget is spent (BudgetExhausted): the stream then stops, and its unasked queries get no outcome at
all, so a later run with a larger budget asks them exactly as an uninterrupted run would have.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

from harness.budget import BudgetExhausted
from harness.records import Frame, Query, ResultRecord, Route, StreamSample
from harness.scheduler import Decision, Plan
from harness.system import Answer, BusyPolicy, PathAnswer, StreamSystem, Usage

Emit = Callable[[Query, "Answer | Exception"], Awaitable[None]]


@dataclass
class _Polling:
    """A proactive query being polled: one chain of polls per route of its plan (two under `both`)."""

    decision: Decision
    features: dict[str, float | None]
    polled: dict[Route, Usage]  # each chain's poll calls so far
    paths: dict[Route, PathAnswer] = field(default_factory=dict)  # chains that ended

    def done(self) -> bool:
        return set(self.polled) <= set(self.paths)


async def play(
    sample: StreamSample,
    frames: AsyncIterator[Frame],
    system: StreamSystem,
    done: Mapping[str, ResultRecord],
    emit: Emit,
    poll_s: float,
    official_span: bool = False,
    only: Collection[str] | None = None,
) -> None:
    """Run the unrecorded queries of `sample` (of those in `only`, where given); recorded ones only restore
    the system's own answers.

    With `official_span`, a query is answered once the stream reaches its official clip end
    (`Query.clip_end_s`, e.g. OVO-Bench's ceil(t)) instead of its time: the frames a benchmark's
    own scripts show. The record says so (`span_end_s`).
    With `system.realtime`, an event that arrives while the system still computes starts when it frees,
    its answer is out at start + latency (`answered_at_s`; a proactive answer's response time), and frames that
    arrive meanwhile are dropped under `busy_policy=drop`. A query still sees only frames up to its own time.
    """
    order = itertools.count()
    events: list[tuple[float, int, str, Query, Route | None]] = []
    for query in sample.queries:
        record = done.get(query.id)
        if record is None and (only is None or query.id in only):
            heapq.heappush(events, (answer_time(query, official_span), next(order), "ask", query, None))
        elif record is not None and record.response is not None and query.kind != "proactive":
            system.remember(query, record.response)

    player = _Player(system, frames, emit, poll_s)
    while events:
        at_s, _, kind, query, route = heapq.heappop(events)
        if kind == "poll" and query.id not in player.polling:
            continue  # the query already ended in an error
        player.start(at_s)
        try:
            await player.clock.advance(at_s if kind == "ask" else player.start_s)  # text-memory notes are written here
            if player.clock.error is not None:
                player.polling.pop(query.id, None)
                await emit(query, player.clock.error)
            elif kind == "ask":
                for first_s, first_route in await player.ask(query, at_s):
                    heapq.heappush(events, (first_s, next(order), "poll", query, first_route))
            else:
                assert route is not None
                again = await player.poll(query, route)
                if again is not None:
                    heapq.heappush(events, (again, next(order), "poll", query, route))
        except BudgetExhausted:
            return  # the job's budget is spent: this query and the later ones stay unrecorded
        except Exception as e:  # one query failed; the stream goes on
            player.polling.pop(query.id, None)
            await emit(query, e)
        finally:
            player.finish()


class _Player:
    """Answers one stream's events; under `system.realtime` it also keeps the busy clock."""

    def __init__(self, system: StreamSystem, frames: AsyncIterator[Frame], emit: Emit, poll_s: float) -> None:
        self.system = system
        self.emit = emit
        self.poll_s = poll_s
        self.realtime = system.cfg.realtime
        self.clock = _Clock(frames, system, drop=self.realtime and system.cfg.busy_policy == BusyPolicy.drop)
        self.polling: dict[str, _Polling] = {}
        self.busy_until = -math.inf
        self.start_s = 0.0  # when the current event starts: its time, or later when the system was busy
        self._spent = 0.0

    def start(self, at_s: float) -> None:
        self.start_s = max(at_s, self.busy_until) if self.realtime else at_s
        self._spent = self.system.compute_s

    def finish(self) -> None:
        if self.realtime:
            self.busy_until = max(self.busy_until, self.start_s + self.system.compute_s - self._spent)
            self.clock.busy(self.start_s, self.busy_until)

    def out_at(self) -> float | None:
        """Realtime: when the current event's answer is out (its start plus every call's latency so far)."""
        return round(self.start_s + self.system.compute_s - self._spent, 6) if self.realtime else None

    async def ask(self, query: Query, at_s: float) -> list[tuple[float, Route]]:
        """Answers a query, or starts polling a proactive one: returns the first polls (time, route)."""
        decision, features = await self.system.decide(query, at_s)
        if query.kind == "proactive":
            routes: tuple[Route, ...] = (decision.route,)
            if decision.plan == Plan.both:
                routes = ("S1", "S2")
            elif decision.plan == Plan.cascade:
                routes = ("S1",)  # S2 answers only if S1's answer, once fired, is unsure
            self.polling[query.id] = _Polling(decision, features, {r: Usage() for r in routes})
            first = query.poll_window_s[0] if query.poll_window_s is not None else at_s
            return [(max(at_s, first), r) for r in routes]
        decision, paths = await self.system.answer(query, decision, at_s)
        for path in paths.values():
            path.answered_at_s = self.out_at()
        scheduler = self.system.scheduler_usage(decision)
        await self.emit(query, Answer(decision, paths, self.system.memory_usage(), features, scheduler))
        return []

    async def poll(self, query: Query, route: Route) -> float | None:
        """One poll of a proactive query on one route; returns when to poll again (None: this chain ended)."""
        state, now_s = self.polling[query.id], self.start_s
        last = query.poll_window_s[1] if query.poll_window_s is not None else None
        if self.clock.ended_before(now_s) or (last is not None and now_s > last + 1e-6):
            state.paths[route] = PathAnswer(None, usage=state.polled[route], polls=state.polled[route])  # never fired
        elif await self.system.poll(query, route, now_s, state.polled[route]):
            decision, paths = await self.system.answer(query, state.decision, now_s, state.polled, both=(route,))
            state.decision = decision  # an escalated cascade says S2
            for path in paths.values():
                path.answered_at_s = self.out_at()
                path.response_time_s = path.answered_at_s if self.realtime else now_s
            state.paths.update(paths)
        else:
            return round(now_s + self.poll_s, 6)
        if state.done():
            del self.polling[query.id]
            kept = state.paths[state.decision.route]
            if kept.text is not None:
                self.system.remember(query, kept.text)
            scheduler = self.system.scheduler_usage(state.decision)
            await self.emit(
                query, Answer(state.decision, state.paths, self.system.memory_usage(), state.features, scheduler)
            )
        return None


def answer_time(query: Query, official_span: bool) -> float:
    """When the stream answers `query`: its time, or its official clip end when that span is asked for."""
    if official_span and query.clip_end_s is not None:
        return max(query.time_s, query.clip_end_s)
    return query.time_s


class _Clock:
    """Feeds the system every frame on screen up to a time; remembers how the video ended."""

    def __init__(self, frames: AsyncIterator[Frame], system: StreamSystem, drop: bool = False) -> None:
        self._frames = frames
        self._system = system
        self._drop = drop  # frames arriving while the system is busy are lost (realtime, busy_policy=drop)
        self._busy: list[tuple[float, float]] = []  # (start, end) of busy stretches still ahead of the clock
        self._pending: Frame | None = None
        self._exhausted = False
        self._last_s: float | None = None
        self.error: Exception | None = None  # the decoder's failure, if the video broke

    async def advance(self, now_s: float) -> None:
        while not self._exhausted:
            if self._pending is None:
                try:
                    self._pending = await anext(self._frames)
                except StopAsyncIteration:
                    self._exhausted = True
                    return
                except Exception as e:
                    self._exhausted, self.error = True, e
                    return
            if self._pending.time_s > now_s + 1e-6:
                return
            if not self._arrived_while_busy(self._pending.time_s):
                await self._system.observe(self._pending)
            self._last_s, self._pending = self._pending.time_s, None

    def busy(self, start_s: float, end_s: float) -> None:
        if self._drop and end_s > start_s:
            self._busy.append((start_s, end_s))

    def _arrived_while_busy(self, time_s: float) -> bool:
        while self._busy and self._busy[0][1] <= time_s:
            self._busy.pop(0)
        return any(start < time_s for start, _ in self._busy)

    def ended_before(self, now_s: float) -> bool:
        return self._exhausted and (self._last_s is None or now_s > self._last_s + 1e-6)
