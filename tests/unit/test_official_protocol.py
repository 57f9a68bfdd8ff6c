"""The official protocols' span and polling on a real stream: frames from [clip_start, clip_end] only, and
proactive polls inside the query's poll window."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from harness.memory import MEMORIES
from harness.records import Query, Request, Response, StreamSample, Truth
from harness.routers import ROUTERS
from harness.scheduler import SCHEDULERS
from harness.simulator import play
from harness.system import Answer, Span, StreamSystem, SystemConfig
from harness.video import FrameReader


@dataclass
class Replies:
    """Says "yes" to a trigger from `fire_at_s` on, "A" otherwise; keeps every request it was sent."""

    fire_at_s: float = 1e9
    requests: list[Request] = field(default_factory=list)

    async def generate(self, request: Request) -> Response:
        self.requests.append(request)
        trigger = request.prompt.startswith("Now?")
        return Response("yes" if trigger and request.time_s >= self.fire_at_s else "no" if trigger else "A")

    async def aclose(self) -> None:
        pass


class Prompts:
    """The few benchmark methods a stream needs."""

    def prompt(self, query: Query) -> str:
        return query.text

    def fired(self, text: str) -> bool:
        return "yes" in text.lower()


def _play(video, queries, backend, span: Span) -> dict[str, Answer]:
    system_cfg = SystemConfig(fps=2.0, max_side=64, span=span)
    memory = MEMORIES.build(MEMORIES.parse({"name": "window", "window_s": 1000.0}))
    scheduler = SCHEDULERS.build(SCHEDULERS.parse({"name": "force_s2"}))
    router = ROUTERS.build(ROUTERS.parse({"name": "uniform"}))
    system = StreamSystem(system_cfg, {"S1": backend, "S2": backend}, scheduler, router, memory, Prompts())
    sample = StreamSample("s", str(video), 8.0, tuple(queries), {q.id: Truth(q.id, "A") for q in queries})
    answers: dict[str, Answer] = {}

    async def emit(query: Query, outcome: Answer | Exception) -> None:
        assert isinstance(outcome, Answer), outcome
        answers[query.id] = outcome

    async def run() -> None:
        reader = FrameReader(str(video), system_cfg.fps, system_cfg.max_side)
        try:
            await play(sample, reader, system, {}, emit, poll_s=1.0, official_span=span == Span.official)
        finally:
            reader.close()

    asyncio.run(run())
    return answers


def test_official_span_shows_frames_from_clip_start_to_clip_end_only(barcode_video_10fps):
    query = Query("q", 5.2, "Which?", "realtime", "mcq", ("a", "b"), clip_start_s=2.0, clip_end_s=6.0)
    official = _play(barcode_video_10fps, [query], Replies(), Span.official)["q"]
    assert official.frame_times_s == (2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0)
    streaming = _play(barcode_video_10fps, [query], Replies(), Span.query)["q"]  # the streaming invariant
    assert streaming.frame_times_s[0] == 0.0 and streaming.frame_times_s[-1] == 5.0


def test_polls_follow_the_poll_window_and_stop_at_its_end(barcode_video_10fps):
    window = Query("p", 1.0, "Say it.", "PO", "proactive", trigger="Now? yes or no", poll_window_s=(2.0, 4.0),
                   clip_start_s=1.0)  # fmt: skip
    backend = Replies(fire_at_s=3.0)
    answer = _play(barcode_video_10fps, [window], backend, Span.official)["p"]
    assert [r.time_s for r in backend.requests] == [2.0, 3.0, 3.0]  # polls at 2 and 3, then the question at 3
    assert answer.response_time_s == 3.0 and answer.text == "A" and answer.usage.n_calls == 3
    assert min(answer.frame_times_s) == 1.0  # the proactive clip starts at the instruction

    backend = Replies()  # never fires: polls at 2, 3, 4 and not after the window
    answer = _play(barcode_video_10fps, [window], backend, Span.official)["p"]
    assert [r.time_s for r in backend.requests] == [2.0, 3.0, 4.0]
    assert answer.text is None and answer.response_time_s is None

    open_ended = Query("o", 5.0, "Say it.", "PO", "proactive", trigger="Now? yes or no")
    backend = Replies()
    _play(barcode_video_10fps, [open_ended], backend, Span.query)
    assert [r.time_s for r in backend.requests] == [5.0, 6.0, 7.0]  # from the query time to the stream's end
