"""The plans a scheduler can make, played on a real stream: both routes, a cascade on the backend's own
confidence or on one the model states, and the realtime clock's busy policy."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from harness.records import Query, Request, Response
from harness.system import Answer, BusyPolicy, LatencySource, StreamSystem, stated_confidence
from tests.helpers import play_stream

CONFIDENCE_PROMPT = "Last line: 'Confidence: N' (0-100)."


@dataclass
class Scripted:
    """Replies per route; `confidence` is given as log-probability-like confidence where `gives_confidence`."""

    replies: dict[str, str]
    confidence: float | None = None
    gives_confidence: bool = False
    latency_s: dict[str, float] = field(default_factory=lambda: {"S1": 0.5, "S2": 3.0})
    requests: list[Request] = field(default_factory=list)

    async def generate(self, request: Request) -> Response:
        self.requests.append(request)
        wanted = self.gives_confidence and request.want_confidence
        return Response(
            self.replies[request.route],
            tokens_in=10,
            tokens_out=1,
            cost_usd=0.001 if request.route == "S1" else 0.01,
            modelled_latency_s=self.latency_s[request.route],
            confidence=self.confidence if wanted else None,
        )

    async def aclose(self) -> None:
        pass


def _play(video, backend, scheduler: dict, queries, **system) -> tuple[dict[str, Answer], StreamSystem]:
    return play_stream(video, backend, queries, scheduler, **system)


QUERY = Query("q", 4.0, "What is it?", "realtime", "mcq", ("a", "b"))


def test_both_records_each_route_and_keeps_the_configured_one(barcode_video_10fps):
    backend = Scripted({"S1": "A", "S2": "B"}, confidence=0.8, gives_confidence=True)
    answers, _ = _play(barcode_video_10fps, backend, {"name": "both", "keep": "S2"}, [QUERY])
    answer = answers["q"]
    assert (answer.decision.route, answer.text) == ("S2", "B")
    assert {r: p.text for r, p in answer.paths.items()} == {"S1": "A", "S2": "B"}
    assert answer.paths["S1"].confidence == 0.8  # recorded where the backend gives it for free
    assert (answer.usage.n_calls, answer.usage.cost_usd) == (2, pytest.approx(0.011))
    assert all(r.want_confidence and r.prompt == "What is it?" for r in backend.requests)  # never a stated one


@pytest.mark.parametrize(
    ("confidence", "route", "calls", "reason"),
    [
        (0.9, "S1", 1, "cascade: S1 confidence 0.90 >= 0.7"),
        (0.3, "S2", 2, "cascade: S1 confidence 0.30 < 0.7, S2 answered"),
    ],
)
def test_cascade_escalates_on_the_backends_confidence(barcode_video_10fps, confidence, route, calls, reason):
    backend = Scripted({"S1": "A", "S2": "B"}, confidence=confidence, gives_confidence=True)
    answers, _ = _play(barcode_video_10fps, backend, {"name": "cascade", "threshold": 0.7}, [QUERY])
    answer = answers["q"]
    assert (answer.decision.route, answer.decision.reason, answer.decision.score) == (route, reason, confidence)
    assert (answer.usage.n_calls, sorted(answer.paths)) == (calls, ["S1", "S2"][:calls])
    assert backend.requests[0].prompt == "What is it?"  # log-probabilities: nothing added to the prompt


def test_cascade_asks_a_backend_without_log_probabilities_to_state_its_confidence(barcode_video_10fps):
    backend = Scripted({"S1": "A\nConfidence: 40", "S2": "B"})
    scheduler = {"name": "cascade", "threshold": 0.5, "confidence_prompt": CONFIDENCE_PROMPT}
    answers, _ = _play(barcode_video_10fps, backend, scheduler, [QUERY])
    answer = answers["q"]
    assert backend.requests[0].prompt == f"What is it?\n{CONFIDENCE_PROMPT}" and not backend.requests[0].want_confidence
    assert (answer.paths["S1"].text, answer.paths["S1"].confidence) == ("A", 0.4)  # the stated line is cut off
    assert (answer.decision.route, answer.text) == ("S2", "B")


def test_a_reply_without_a_stated_confidence_escalates(barcode_video_10fps):
    backend = Scripted({"S1": "A", "S2": "B"})
    answers, _ = _play(barcode_video_10fps, backend, {"name": "cascade", "confidence_prompt": "Say it."}, [QUERY])
    assert answers["q"].decision.reason == "cascade: S1 confidence unstated < 0.7, S2 answered"


@pytest.mark.parametrize(
    ("text", "kept", "confidence"),
    [
        ("B\nConfidence: 85", "B", 0.85),
        ("B. Confidence = 0.6", "B. Confidence = 0.6", None),
        ("B\nconfidence: 0.6", "B", 0.6),
    ],
)
def test_stated_confidence_reads_the_last_line_in_percent_or_as_a_fraction(text, kept, confidence):
    assert stated_confidence(text) == (kept, confidence)


@pytest.mark.parametrize(
    ("policy", "seen_by_second"),
    [
        # S2 takes 3 s: busy 2..5 (first query), then 5..8 (the second, which waited): the frames that arrive
        # inside either stretch are lost; the one at 5.0 arrives as the first answer is out, and is seen
        (BusyPolicy.drop, [0.0, 0.5, 1.0, 1.5, 2.0, 5.0]),
        (BusyPolicy.queue, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0]),
    ],
)
def test_realtime_busy_policy_and_a_query_that_waits_for_the_busy_system(barcode_video_10fps, policy, seen_by_second):
    backend = Scripted({"S1": "A", "S2": "B"})
    first = Query("first", 2.0, "First?", "realtime", "mcq")
    second = Query("second", 4.0, "Second?", "realtime", "mcq")  # arrives while S2 still computes the first
    later = Query("later", 6.0, "Later?", "realtime", "mcq")
    answers, _ = _play(
        barcode_video_10fps, backend, {"name": "force_s2"}, [first, second, later],
        realtime=True, busy_policy=policy, latency=LatencySource.modelled,
    )  # fmt: skip
    assert answers["first"].answered_at_s == 5.0  # 2 + 3
    assert answers["second"].answered_at_s == 8.0  # starts when the first is out (5), + 3
    assert answers["second"].frame_times_s[-1] == 2.0 if policy == BusyPolicy.drop else 4.0  # never past its time
    assert answers["later"].answered_at_s == 11.0  # starts at 8
    assert list(answers["later"].frame_times_s) == seen_by_second


def test_without_realtime_the_stream_waits_for_the_model(barcode_video_10fps):
    backend = Scripted({"S1": "A", "S2": "B"})
    answers, stream = _play(barcode_video_10fps, backend, {"name": "force_s2"}, [QUERY], latency=LatencySource.modelled)
    assert answers["q"].answered_at_s is None and stream.compute_s == 3.0
