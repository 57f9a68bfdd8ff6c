"""The reference backend answers from the frames it is given, and only from them."""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import fields
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from backends.reference import HUES, SHAPES, SIGHT_S, LatencyProfile, Reference, ReferenceConfig, detect
from harness.benchmarks.synthetic import Synthetic, SyntheticConfig
from harness.benchmarks.synthetic_video import COLOURS, LIFETIME_S, shape_outline
from harness.benchmarks.synthetic_video import SHAPES as SCENE_SHAPES
from harness.errors import BackendError
from harness.records import Frame, Request, StreamSample, Turn


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return Synthetic(SyntheticConfig(root=str(tmp_path_factory.mktemp("synthetic")), videos=2, duration_s=40.0, seed=3))


@pytest.fixture(scope="module")
def videos(bench: Synthetic) -> list[tuple[StreamSample, list[Frame]]]:
    """Each sample with all its decoded frames."""
    out = []
    for sample in bench.load():
        with av.open(sample.video) as container:
            frames = [
                Frame(i, float(f.time), f.to_ndarray(format="rgb24")) for i, f in enumerate(container.decode(video=0))
            ]
        out.append((sample, frames))
    return out


@pytest.fixture(scope="module")
def backend() -> Reference:
    return Reference(ReferenceConfig())


def on_screen(frames: list[Frame], t: float) -> Frame:
    """The frame on screen at t: the last one with a time <= t."""
    return frames[bisect.bisect_right([f.time_s for f in frames], t + 1e-9) - 1]


def ask(backend: Reference, frames, prompt: str, history=(), route="S1"):
    frames = tuple(frames)
    time_s = max((f.time_s for f in frames), default=0.0)
    return asyncio.run(backend.generate(Request(time_s, route, frames, prompt, tuple(history))))


def queries(videos, task: str):
    return [(s, frames, q) for s, frames in videos for q in s.queries if q.task == task]


def test_vocabulary_matches_the_benchmark():
    assert list(HUES) == list(COLOURS) and SHAPES == SCENE_SHAPES
    assert LIFETIME_S[0] / 2 == SIGHT_S  # frames 2 * SIGHT_S apart see every object at least once


def test_detector_finds_each_colour_and_shape_and_ignores_grey():
    rng = np.random.default_rng(0)
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            pixels = np.full((240, 320, 3), (120, 110, 95), np.uint8)
            pixels += rng.integers(0, 12, pixels.shape, dtype=np.uint8)
            cv2.fillPoly(pixels, [shape_outline(shape, 100, 120, 36, 17.0)], rgb, cv2.LINE_AA)
            cv2.fillPoly(pixels, [shape_outline("star", 230, 120, 36, 0.0)], (235, 235, 235), cv2.LINE_AA)
            assert [(d.colour, d.shape) for d in detect(pixels)] == [(colour, shape)]


def test_realtime_questions_are_answered_from_the_frame_on_screen(bench, videos, backend):
    asked = queries(videos, "realtime")
    right = 0
    for sample, frames, q in asked:
        reply = ask(backend, [on_screen(frames, q.time_s)], bench.prompt(q)).text
        right += bench.parse(q, reply) == sample.truths[q.id].answer
    accuracy = right / len(asked)
    print(f"realtime accuracy from the last frame: {accuracy:.2f} over {len(asked)}")
    assert len(asked) >= 6 and accuracy >= 0.8


def test_clue_needs_a_frame_from_when_the_object_was_on_screen(bench, videos, backend):
    asked = queries(videos, "clue")
    assert asked
    for sample, frames, q in asked:
        truth = sample.truths[q.id]
        appear, disappear = truth.evidence_s
        seen = [on_screen(frames, (appear + disappear) / 2), on_screen(frames, q.time_s)]
        assert bench.parse(q, ask(backend, seen, bench.prompt(q)).text) == truth.answer
        after = [f for f in frames if disappear + 0.5 <= f.time_s <= q.time_s]
        reply = ask(backend, after, bench.prompt(q)).text
        assert reply == f"A. {q.options[0]}"  # nothing of that colour seen: the first option, a guess


def test_reasoning_counts_and_order_come_from_all_frames_given(bench, videos, backend):
    asked = queries(videos, "reasoning")
    right_all = right_last = 0
    for sample, frames, q in asked:
        truth = sample.truths[q.id]
        history = [f for f in frames if f.time_s <= q.time_s]
        right_all += bench.parse(q, ask(backend, history, bench.prompt(q)).text) == truth.answer
        right_last += bench.parse(q, ask(backend, history[-1:], bench.prompt(q)).text) == truth.answer
    print(f"reasoning: {right_all}/{len(asked)} with all frames, {right_last}/{len(asked)} with the last frame")
    assert right_all == len(asked) and right_last < len(asked)


def test_proactive_trigger_fires_only_once_the_object_is_there(bench, videos, backend):
    asked = queries(videos, "proactive")
    assert asked
    for sample, frames, q in asked:
        truth = sample.truths[q.id]
        start, _ = truth.window_s
        before = ask(backend, [on_screen(frames, q.time_s)], q.trigger).text
        after = ask(backend, [on_screen(frames, start)], q.trigger).text
        assert (bench.fired(before), bench.fired(after)) == (False, True)
        announcement = ask(backend, [on_screen(frames, start)], bench.prompt(q)).text
        assert bench.parse(q, announcement) == truth.answer


def test_sequential_follow_up_reads_the_colour_from_the_history(bench, videos, backend):
    for sample, frames, first in queries(videos, "sequential"):
        if first.follows is not None:
            continue
        second = next(q for q in sample.queries if q.follows == first.id)
        first_reply = ask(backend, [on_screen(frames, first.time_s)], bench.prompt(first)).text
        assert bench.parse(first, first_reply) == sample.truths[first.id].answer
        now = [on_screen(frames, second.time_s)]
        reply = ask(backend, now, bench.prompt(second), [Turn(bench.prompt(first), first_reply)]).text
        assert reply == sample.truths[second.id].answer
        absent = next(c for c in HUES if c not in {d.colour for d in detect(now[0].pixels)})
        other = ask(backend, now, bench.prompt(second), [Turn(bench.prompt(first), f"A. {absent}")]).text
        assert other == "no"


def test_modelled_latency_grows_with_frames_and_s2_is_slower(backend):
    frame = Frame(0, 0.0, np.zeros((240, 320, 3), np.uint8))
    prompt = "Is a red object on screen now? Answer yes or no."
    one, many = ask(backend, [frame], prompt), ask(backend, [frame] * 10, prompt)
    slow = ask(backend, [frame] * 10, prompt, route="S2")
    assert one.modelled_latency_s < many.modelled_latency_s < slow.modelled_latency_s
    assert many.modelled_latency_s == pytest.approx(0.05 + 0.01 * 10 + 0.02 * 1)
    assert (many.text, many.tokens_out) == ("no", 1)
    assert many.tokens_in == len(prompt.split()) + 64 * 10


def test_history_counts_as_input_and_sleep_keeps_the_reply():
    sleepy = Reference(ReferenceConfig(sleep=True, s1=LatencyProfile(0.001, 0.0, 0.0)))
    frame = Frame(0, 0.0, np.zeros((24, 32, 3), np.uint8))
    prompt = "Is a red object on screen now? Answer yes or no."
    turn = Turn("What colour is the star on screen now?", "B. red")
    reply = ask(sleepy, [frame], prompt, [turn])
    assert reply.text == "no" and reply.modelled_latency_s == pytest.approx(0.001)
    assert reply.tokens_in == len(prompt.split()) + len(turn.question.split()) + 2 + 64


def test_unknown_question_or_route_is_a_backend_error(backend):
    frame = Frame(0, 0.0, np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(BackendError, match="not in the synthetic grammar"):
        ask(backend, [frame], "Describe the video in detail.")
    with pytest.raises(BackendError, match="route"):
        ask(backend, [frame], "Is a red object on screen now?", route="S3")


def test_every_generated_question_gets_a_parseable_reply(bench, videos, backend):
    for sample, frames in videos:
        for q in sample.queries:
            prompts = [bench.prompt(q)] + ([q.trigger] if q.trigger else [])
            for prompt in prompts:
                reply = ask(backend, [on_screen(frames, q.time_s)], prompt, [Turn("q", "A. red")]).text
                assert bench.parse(q, reply) is not None or q.kind == "proactive"


def test_conf_file_carries_every_field_with_its_default():
    conf = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "conf/backend/reference.yaml"))
    conf.pop("defaults")
    expected = OmegaConf.to_container(OmegaConf.create(ReferenceConfig()))
    assert conf == expected and set(conf) == {f.name for f in fields(ReferenceConfig)}


def test_the_question_asked_last_in_the_prompt_is_the_one_answered(backend):
    frame = Frame(0, 0.0, np.zeros((24, 32, 3), np.uint8))
    prompt = "Earlier: What colour is the star on screen now?\nIs a red object on screen now? Answer yes or no."
    assert ask(backend, [frame], prompt).text == "no"


def test_text_notes_stand_in_for_frames_no_longer_shown(bench, videos, backend):
    """A clue seen only in a note S1 wrote while the object was on screen is still answered."""
    for sample, frames, q in queries(videos, "clue"):
        truth = sample.truths[q.id]
        appear, disappear = truth.evidence_s
        then = on_screen(frames, (appear + disappear) / 2)
        note = ask(backend, [then], "Describe what is on screen now in one sentence.").text
        assert note.endswith("on screen.") and "appeared" not in note
        now = [on_screen(frames, q.time_s)]
        context = (f"[{then.time_s:.1f} s] {note}",)
        reply = asyncio.run(backend.generate(Request(q.time_s, "S2", tuple(now), bench.prompt(q), context=context)))
        assert bench.parse(q, reply.text) == truth.answer


def test_describe_lists_every_coloured_object_or_says_none(backend):
    canvas = np.full((120, 160, 3), 90, np.uint8)
    assert ask(backend, [Frame(0, 0.0, canvas)], "Describe what is on screen now.").text == (
        "No coloured object is on screen."
    )
    drawn = canvas.copy()
    cv2.circle(drawn, (40, 60), 18, (255, 0, 0), -1)
    cv2.rectangle(drawn, (100, 40), (136, 76), (0, 0, 255), -1)
    reply = ask(backend, [Frame(0, 0.0, drawn)], "Describe what is on screen now.").text
    assert "a red circle" in reply.lower() and "a blue square" in reply.lower() and reply.endswith("are on screen.")


def ask_confidence(backend: Reference, frames, prompt: str, time_s: float | None = None, context=()):
    frames = tuple(frames)
    time_s = max((f.time_s for f in frames), default=0.0) if time_s is None else time_s
    request = Request(time_s, "S1", frames, prompt, context=tuple(context), want_confidence=True)
    return asyncio.run(backend.generate(request))


def drawn(time_s: float, *shapes: tuple[str, str]) -> Frame:
    """A grey frame with these (colour, shape) objects side by side."""
    pixels = np.full((120, 320, 3), (120, 110, 95), np.uint8)
    for i, (colour, shape) in enumerate(shapes):
        cv2.fillPoly(pixels, [shape_outline(shape, 50 + 90 * i, 60, 36, 0.0)], COLOURS[colour], cv2.LINE_AA)
    return Frame(round(time_s * 2), time_s, pixels)


def test_confidence_is_set_only_when_asked_and_never_changes_the_reply(bench, videos, backend):
    sample, frames = videos[0]
    q = next(q for q in sample.queries if q.task == "realtime")
    seen = [f for f in frames if f.time_s <= q.time_s][-8:]
    plain = ask(backend, seen, bench.prompt(q))
    asked = ask_confidence(backend, seen, bench.prompt(q), q.time_s)
    assert plain.confidence is None and asked.text == plain.text and Reference.gives_confidence
    assert ask_confidence(backend, seen, bench.prompt(q), q.time_s).confidence == asked.confidence


def test_what_the_recent_frames_show_clearly_is_confident_and_a_guess_is_at_chance(bench, videos, backend):
    """S1's window: questions about now are sure; a detail gone long ago is a guess among four options."""
    for sample, frames, q in queries(videos, "realtime") + queries(videos, "clue"):
        window = [f for f in frames if q.time_s - 4.0 <= f.time_s <= q.time_s + 1e-9]
        reply = ask_confidence(backend, window, bench.prompt(q), q.time_s)
        if q.task == "realtime":
            assert reply.confidence == 1.0 and bench.parse(q, reply.text) == sample.truths[q.id].answer
        else:
            assert reply.confidence == pytest.approx(1 / len(q.options)) == 0.25


def test_counts_so_far_are_as_sure_as_the_share_of_the_stream_their_frames_cover(bench, videos, backend):
    for sample, frames, q in queries(videos, "reasoning"):
        past = [f for f in frames if f.time_s <= q.time_s + 1e-9]
        every_half_second = [f for f in past if round(f.time_s * 2) == f.time_s * 2]
        full = ask_confidence(backend, every_half_second, bench.prompt(q), q.time_s)
        window = ask_confidence(backend, every_half_second[-8:], bench.prompt(q), q.time_s)
        assert full.confidence == 1.0 and bench.parse(q, full.text) == sample.truths[q.id].answer
        seen_s = q.time_s - every_half_second[-8].time_s + SIGHT_S  # 3.5 s of frames, each seeing SIGHT_S around it
        guess = window.text == f"A. {q.options[0]}" and window.confidence == 1 / len(q.options)  # count not offered
        assert guess or window.confidence == pytest.approx(seen_s / q.time_s)
        assert window.confidence < 0.5


def test_coverage_counts_timed_notes_and_the_gaps_between_frames(backend):
    prompt = "How many red objects have appeared so far?\nA. 0\nB. 1\nC. 2\nD. 3"
    frames = [drawn(t, ("red", "circle")) for t in (9.0, 10.0)]  # [8.25, 10] seen of 10 s
    assert ask_confidence(backend, frames, prompt).confidence == pytest.approx(1.75 / 10)
    note = "[2.0 s] A red square is on screen."  # and [1.25, 2.75]
    reply = ask_confidence(backend, frames, prompt, context=[note])
    assert reply.text == "C. 2" and reply.confidence == pytest.approx(3.25 / 10)


def test_a_changing_or_empty_screen_gives_low_confidence(backend):
    prompt = "What colour is the circle on screen now?\nA. red\nB. blue\nC. green\nD. yellow"
    changing = [drawn(4.0, ("blue", "circle")), drawn(4.5, ("red", "circle")), drawn(5.0, ("red", "circle"))]
    reply = ask_confidence(backend, [drawn(1.0, ("blue", "circle")), *changing], prompt)  # 1.0 s: not recent
    assert reply.text == "A. red" and reply.confidence == pytest.approx(2 / 3)
    assert ask_confidence(backend, changing[1:], prompt).confidence == 1.0
    assert ask_confidence(backend, [], "Is a red object on screen now? Answer yes or no.").confidence == 0.0
    assert ask_confidence(backend, [], "Describe what is on screen now.").confidence == 0.0
    assert ask_confidence(backend, [], prompt).confidence == 0.25  # no circle seen: a guess among four
