"""The official protocols' span and polling on a real stream: frames from [clip_start, clip_end] only, and
proactive polls inside the query's poll window."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.records import Query, Request, Response
from harness.system import Answer, Span
from tests.helpers import play_stream


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


def _play(video, queries, backend, span: Span) -> dict[str, Answer]:
    return play_stream(video, backend, queries, span=span)[0]


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
