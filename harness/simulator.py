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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from harness.budget import BudgetExhausted
from harness.records import Frame, Query, ResultRecord, StreamSample
from harness.scheduler import Decision
from harness.system import Answer, StreamSystem, Usage

Emit = Callable[[Query, "Answer | Exception"], Awaitable[None]]


async def play(
    sample: StreamSample,
    frames: AsyncIterator[Frame],
    system: StreamSystem,
    done: Mapping[str, ResultRecord],
    emit: Emit,
    poll_s: float,
    official_span: bool = False,
) -> None:
    """Run the unrecorded queries of `sample`; recorded ones only restore the system's own answers.

    With `official_span`, a query is answered once the stream reaches its official clip end
    (`Query.clip_end_s`, e.g. OVO-Bench's ceil(t)) instead of its time: the frames a benchmark's
    own scripts show. The record says so (`span_end_s`).
    """
    order = itertools.count()
    events: list[tuple[float, int, str, Query]] = []
    for query in sample.queries:
        record = done.get(query.id)
        if record is None:
            heapq.heappush(events, (answer_time(query, official_span), next(order), "ask", query))
        elif record.response is not None and query.kind != "proactive":
            system.remember(query, record.response)

    clock = _Clock(frames, system)
    polling: dict[str, tuple[Decision, Usage]] = {}
    while events:
        now_s, _, kind, query = heapq.heappop(events)
        try:
            await clock.advance(now_s)  # a text memory writes its notes here
        except BudgetExhausted:
            return
        if clock.error is not None:
            await emit(query, clock.error)
            continue
        try:
            if kind == "ask":
                decision = system.decide(query, now_s)
                if query.kind == "proactive":
                    polling[query.id] = (decision, Usage())
                    first = query.poll_window_s[0] if query.poll_window_s is not None else now_s
                    heapq.heappush(events, (max(now_s, first), next(order), "poll", query))
                else:
                    await emit(query, await system.ask(query, decision, now_s, Usage()))
                continue
            decision, usage = polling[query.id]
            last = query.poll_window_s[1] if query.poll_window_s is not None else None
            if clock.ended_before(now_s) or (last is not None and now_s > last + 1e-6):
                await emit(query, Answer(decision, None, (), usage, system.memory_usage()))  # never fired
            elif await system.poll(query, decision, now_s, usage):
                answer = await system.ask(query, decision, now_s, usage)
                answer.response_time_s = now_s
                await emit(query, answer)
            else:
                heapq.heappush(events, (round(now_s + poll_s, 6), next(order), "poll", query))
        except BudgetExhausted:
            return  # the job's budget is spent: this query and the later ones stay unrecorded
        except Exception as e:  # one query failed; the stream goes on
            await emit(query, e)


def answer_time(query: Query, official_span: bool) -> float:
    """When the stream answers `query`: its time, or its official clip end when that span is asked for."""
    if official_span and query.clip_end_s is not None:
        return max(query.time_s, query.clip_end_s)
    return query.time_s


class _Clock:
    """Feeds the system every frame on screen up to a time; remembers how the video ended."""

    def __init__(self, frames: AsyncIterator[Frame], system: StreamSystem) -> None:
        self._frames = frames
        self._system = system
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
            await self._system.observe(self._pending)
            self._last_s, self._pending = self._pending.time_s, None

    def ended_before(self, now_s: float) -> bool:
        return self._exhausted and (self._last_s is None or now_s > self._last_s + 1e-6)
