"""A classical-vision answerer for the synthetic benchmark: colour masks and contours, no model.

It exists so the whole harness (frame sampling, memory, routing, scheduling, scoring) can run end
to end on a laptop, with results that mean something: it reads only the frames it is handed, so
a memory that drops the frame with the evidence, or a scheduler that answers from stale frames,
costs it points exactly as it would cost a real video-language model. Latency is modelled per
route (S1 fast, S2 slow), and optionally really waited, so latency-aware parts see a slow model.
Each reply comes with a confidence read from the same evidence (`answer`), for a cascade to escalate on.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from backends.base import BACKENDS
from harness.errors import BackendError
from harness.records import Frame, Request, Response, Turn

HUES = {"red": 0, "yellow": 30, "green": 60, "cyan": 90, "blue": 120, "magenta": 150}  # OpenCV hue, 0..179
SHAPES = ("circle", "square", "triangle", "star")
HUE_TOLERANCE = 12
MIN_SATURATION = 110
MIN_VALUE = 90
MIN_AREA_FRACTION = 0.0015  # of the frame; smaller blobs are compression noise
STAR_SOLIDITY = 0.75  # a star fills about 0.55 of its convex hull, the other shapes 0.85 or more
CIRCLE_FILL = 0.75  # share of the enclosing circle a blob fills: circle above, square and triangle below
SQUARE_FILL = 0.53  # square above, triangle below
RECENT_S = 1.0  # "now" questions: frames this close to the latest one should agree with it
SIGHT_S = 0.75  # a frame vouches for this long either side: half the synthetic objects' shortest lifetime (1.5 s)
_COLOUR = "(" + "|".join(HUES) + ")"
_SHAPE = "(" + "|".join(SHAPES) + ")"


@dataclass(frozen=True)
class LatencyProfile:
    base_s: float = 0.0
    per_frame_s: float = 0.0
    per_output_token_s: float = 0.0


@dataclass(frozen=True)
class ReferenceConfig:
    name: str = "reference"
    tokens_per_frame: int = 64  # modelled visual tokens per frame, for tokens_in
    s1: LatencyProfile = field(default_factory=lambda: LatencyProfile(0.05, 0.01, 0.02))
    s2: LatencyProfile = field(default_factory=lambda: LatencyProfile(0.2, 0.03, 0.05))
    sleep: bool = False  # really wait the modelled latency (emulates a slow model in demos and tests)


@dataclass(frozen=True)
class Detection:
    """A coloured shape found in one frame."""

    colour: str
    shape: str
    area: float


@dataclass(frozen=True)
class Reply:
    """A reply and the share of its evidence that agrees with it (see `answer`)."""

    text: str
    confidence: float  # 0..1


@BACKENDS.register("reference", ReferenceConfig)
class Reference:
    """Answers the synthetic benchmark's questions from the frames it is given, by colour segmentation.

    Not a language model: it parses the benchmark's fixed question grammar and raises BackendError on
    anything else. Its score depends only on which frames reach it, which is what the harness varies.
    Its confidence (`want_confidence`) is evidence-based, not a token probability; see `answer`.
    """

    gives_confidence = True
    models_latency = True  # per-route LatencyProfile: what `system.latency=modelled` charges

    def __init__(self, cfg: ReferenceConfig) -> None:
        self.cfg = cfg

    async def generate(self, request: Request) -> Response:
        started = time.perf_counter()
        profile = {"S1": self.cfg.s1, "S2": self.cfg.s2}.get(request.route)
        if profile is None:
            raise BackendError(f"reference backend: unknown route {request.route!r} (expected S1 or S2)")
        reply = await asyncio.to_thread(
            answer, request.frames, request.prompt, request.history, request.context, request.time_s
        )
        text = reply.text
        tokens_out = len(text.split())
        n_frames = len(request.frames)
        modelled = profile.base_s + profile.per_frame_s * n_frames + profile.per_output_token_s * tokens_out
        if self.cfg.sleep:
            await asyncio.sleep(max(0.0, modelled - (time.perf_counter() - started)))
        words_in = (
            len(request.prompt.split())
            + sum(len(turn.question.split()) + len(turn.answer.split()) for turn in request.history)
            + sum(len(note.split()) for note in request.context)
        )
        return Response(
            text=text,
            tokens_in=words_in + self.cfg.tokens_per_frame * n_frames,
            tokens_out=tokens_out,
            latency_s=time.perf_counter() - started,
            modelled_latency_s=modelled,
            visual_tokens=self.cfg.tokens_per_frame * n_frames,
            confidence=reply.confidence if request.want_confidence else None,
        )

    async def aclose(self) -> None:
        """Nothing to release."""


def answer(
    frames: tuple[Frame, ...],
    prompt: str,
    history: tuple[Turn, ...] = (),
    context: tuple[str, ...] = (),
    now_s: float | None = None,
) -> Reply:
    """The reply to one prompt of the synthetic grammar, from these frames (and text notes) only.

    Its confidence is the share of the evidence that agrees with the reply, deterministic like the reply:
    about now, the share of the frames of the last RECENT_S seconds (up to the latest frame) that read the same
    as the latest one (0 without frames); about the shape of an object seen earlier, the share of that colour's
    sightings with the majority shape; counts and order so far, the share of the stream up to `now_s` (the
    request's time; default: the latest frame) that lies within SIGHT_S of a frame or a note, since any second
    not seen may hide an object; a guess among options (nothing seen decides it), chance: 1 / number of options.
    """
    ordered = sorted(frames, key=lambda f: f.time_s)
    if now_s is None:
        now_s = ordered[-1].time_s if ordered else 0.0
    scene = _Scene(ordered, context, now_s)
    options = re.findall(r"^([A-D])\. (.+?)\s*$", prompt, re.MULTILINE)
    matches = [(found, rule) for pattern, rule in _RULES if (found := re.search(pattern, prompt))]
    if matches:  # the question asked last in the prompt, should earlier turns be quoted before it
        found, rule = max(matches, key=lambda pair: pair[0].start())
        return rule(found, scene, options, history)
    first_line = prompt.strip().splitlines()[0] if prompt.strip() else ""
    raise BackendError(f"reference backend: question not in the synthetic grammar: {first_line[:120]!r}")


def detect(pixels: np.ndarray) -> list[Detection]:
    """Coloured shapes in an RGB uint8 frame; unsaturated (grey, white) shapes are ignored."""
    return [Detection(colour, classify_shape(contour, area), area) for colour, contour, area in coloured_blobs(pixels)]


def coloured_blobs(pixels: np.ndarray) -> list[tuple[str, np.ndarray, float]]:
    """(colour, contour, area) of every saturated blob of an RGB uint8 frame big enough to be an object."""
    hue, saturation, value = cv2.split(cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2HSV))
    vivid = cv2.inRange(saturation, MIN_SATURATION, 255) & cv2.inRange(value, MIN_VALUE, 255)
    if cv2.countNonZero(vivid) == 0:
        return []
    min_area = MIN_AREA_FRACTION * pixels.shape[0] * pixels.shape[1]
    found = []
    for colour, centre in HUES.items():
        distance = cv2.absdiff(hue, np.full_like(hue, centre))
        distance = cv2.min(distance, 180 - distance)
        mask = cv2.inRange(distance, 0, HUE_TOLERANCE) & vivid
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            area = cv2.contourArea(contour)
            if area >= min_area:
                found.append((colour, contour, area))
    return found


# ---- question rules: (pattern, rule(match, scene, options, history) -> Reply)

Reading = Callable[[list[Detection]], str | None]  # a "now" rule's answer from one frame's detections


def _colour_of_shape_now(m: re.Match, scene: _Scene, options: list, history: tuple) -> Reply:
    shape = m.group(1)
    return _choose(options, *scene.read_now(lambda found: next((d.colour for d in found if d.shape == shape), None)))


def _shape_of_colour_now(m: re.Match, scene: _Scene, options: list, history: tuple) -> Reply:
    colour = m.group(1)
    return _choose(options, *scene.read_now(lambda found: next((d.shape for d in found if d.colour == colour), None)))


def _count_now(m: re.Match, scene: _Scene, options: list, history: tuple) -> Reply:
    return _choose(options, *scene.read_now(lambda found: str(len(found))))


def _shape_seen_earlier(m: re.Match, scene: _Scene, options: list, history: tuple) -> Reply:
    shapes = Counter(d.shape for _, d in scene.sightings() if d.colour == m.group(1))
    if not shapes:
        return _choose(options, None, 0.0)
    shape, votes = shapes.most_common(1)[0]  # the majority, over sightings
    return _choose(options, shape, votes / shapes.total())


def _colour_count_so_far(m: re.Match, scene: _Scene, options: list, history: tuple) -> Reply:
    kinds = {(d.colour, d.shape) for _, d in scene.sightings() if d.colour == m.group(1)}
    return _choose(options, str(len(kinds)), scene.coverage())


def _shape_count_so_far(m: re.Match, scene: _Scene, options: list, history: tuple) -> Reply:
    kinds = {(d.colour, d.shape) for _, d in scene.sightings() if d.shape == m.group(1)}
    return _choose(options, str(len(kinds)), scene.coverage())


def _appeared_first(m: re.Match, scene: _Scene, options: list, history: tuple) -> Reply:
    first_seen: dict[str, float] = {}
    for time_s, d in sorted(scene.sightings(), key=lambda pair: pair[0]):
        first_seen.setdefault(f"{d.colour} {d.shape}", time_s)
    seen = [text for _, text in options if text in first_seen]
    return _choose(options, min(seen, key=first_seen.__getitem__) if seen else None, scene.coverage())


def _named_colour_now(m: re.Match, scene: _Scene, options: list, history: tuple) -> Reply:
    named = re.search(rf"\b{_COLOUR}\b", history[-1].answer, re.IGNORECASE) if history else None
    if named is None:
        return Reply("no", 0.5)  # no colour to look for: a yes/no guess
    return _yes_no(scene, named.group(1).lower())


def _colour_now(m: re.Match, scene: _Scene, options: list, history: tuple) -> Reply:
    return _yes_no(scene, m.group(1))


def _announce(m: re.Match, scene: _Scene, options: list, history: tuple) -> Reply:
    colour = m.group(1)

    def read(found: list[Detection]) -> str | None:
        return next((d.shape for d in found if d.colour == colour), None)

    for position in reversed(range(len(scene.frames))):  # the latest frame that shows one
        shape = read(scene.detections(position))
        if shape is not None:
            return Reply(f"A {colour} {shape} appeared.", scene.agreement(read, shape))
    return Reply(f"No {colour} object has appeared.", scene.agreement(read, None))


def _describe(m: re.Match, scene: _Scene, options: list, history: tuple) -> Reply:
    text, confidence = scene.read_now(_description)
    return Reply(text or _description([]), confidence)


_RULES: list[tuple[str, Callable[..., Reply]]] = [
    (rf"What colour is the {_SHAPE} on screen now\?", _colour_of_shape_now),
    (rf"What shape is the {_COLOUR} object on screen now\?", _shape_of_colour_now),
    (r"How many coloured objects are on screen now\?", _count_now),
    (rf"What shape was the {_COLOUR} object that appeared earlier in the video\?", _shape_seen_earlier),
    (rf"How many {_COLOUR} objects have appeared so far\?", _colour_count_so_far),
    (rf"How many coloured {_SHAPE}s have appeared so far\?", _shape_count_so_far),
    (r"Which of these appeared first\?", _appeared_first),
    (r"Is an object of the colour you named in your previous answer on screen now\?", _named_colour_now),
    (rf"Is a {_COLOUR} object on screen now\?", _colour_now),
    (rf"Tell me when a {_COLOUR} object appears, and name its shape\.", _announce),
    (r"Describe what is on screen now", _describe),
]


class _Scene:
    """The frames of a request and its text notes, read lazily: detection runs once per frame."""

    def __init__(self, frames: list[Frame], notes: tuple[str, ...], now_s: float) -> None:
        self.frames = frames
        self.now_s = now_s
        self._notes = notes
        self._detected: dict[int, list[Detection]] = {}

    def detections(self, position: int) -> list[Detection]:
        if position not in self._detected:
            self._detected[position] = detect(self.frames[position].pixels)
        return self._detected[position]

    def read_now(self, read: Reading) -> tuple[str | None, float]:
        """What the latest frame reads (None without frames), and how many recent frames agree (`agreement`)."""
        if not self.frames:
            return None, 0.0
        value = read(self.detections(len(self.frames) - 1))
        return value, self.agreement(read, value)

    def agreement(self, read: Reading, value: str | None) -> float:
        """Share of the frames of the last RECENT_S seconds (up to the latest frame) that read `value`; 0 without."""
        if not self.frames:
            return 0.0
        latest = self.frames[-1].time_s
        recent = [i for i, f in enumerate(self.frames) if f.time_s >= latest - RECENT_S - 1e-6]
        return sum(read(self.detections(i)) == value for i in recent) / len(recent)

    def sightings(self) -> list[tuple[float, Detection]]:
        """Every (time, object) seen in a frame or named in a note ("[12.0 s] A red circle ...")."""
        seen = [(f.time_s, d) for i, f in enumerate(self.frames) for d in self.detections(i)]
        for note in self._notes:
            time_s = _note_time(note)
            for colour, shape in re.findall(rf"\b{_COLOUR} {_SHAPE}\b", note, re.IGNORECASE):
                seen.append((time_s, Detection(colour.lower(), shape.lower(), 0.0)))
        return seen

    def coverage(self) -> float:
        """Share of the stream so far, [0, now_s], within SIGHT_S of a frame or a timed note."""
        times = sorted({f.time_s for f in self.frames} | {t for t in map(_note_time, self._notes) if t < math.inf})
        if self.now_s <= 0:
            return 1.0 if times else 0.0
        covered, reached = 0.0, 0.0
        for t in times:
            start, end = max(reached, t - SIGHT_S, 0.0), min(t + SIGHT_S, self.now_s)
            covered += max(0.0, end - start)
            reached = max(reached, end)
        return covered / self.now_s


# ---- helpers


def _choose(options: list[tuple[str, str]], value: str | None, confidence: float) -> Reply:
    """The option whose text is `value`, as "B. red"; the first option as a guess, at chance, if none is."""
    if not options:
        raise BackendError("reference backend: a multiple-choice question without options 'A. ...'")
    for letter, text in options:
        if value is not None and text == value:
            return Reply(f"{letter}. {text}", confidence)
    letter, text = options[0]
    return Reply(f"{letter}. {text}", 1 / len(options))


def _yes_no(scene: _Scene, colour: str) -> Reply:
    value, confidence = scene.read_now(lambda found: "yes" if any(d.colour == colour for d in found) else "no")
    return Reply(value or "no", confidence)


def _description(found: list[Detection]) -> str:
    if not found:
        return "No coloured object is on screen."
    things = [f"a {d.colour} {d.shape}" for d in found]
    listed = things[0] if len(things) == 1 else ", ".join(things[:-1]) + " and " + things[-1]
    return f"{listed[0].upper()}{listed[1:]} {'is' if len(things) == 1 else 'are'} on screen."


def _note_time(note: str) -> float:
    """The stream time a note is stamped with ("[12.0 s] ..."); inf when it has none."""
    stamp = re.match(r"\s*\[(\d+(?:\.\d+)?) s\]", note)
    return float(stamp.group(1)) if stamp else math.inf


def classify_shape(contour: np.ndarray, area: float) -> str:
    """Star by low solidity; then how much of its enclosing circle the blob fills.

    Fill is rotation- and scale-invariant and survives compression better than counting the vertices
    of approxPolyDP: about 0.87 for a circle, 0.64 for a square, 0.41 for a triangle.
    """
    hull_area = cv2.contourArea(cv2.convexHull(contour))
    if hull_area > 0 and area / hull_area < STAR_SOLIDITY:
        return "star"
    _, radius = cv2.minEnclosingCircle(contour)
    fill = area / (np.pi * radius * radius) if radius > 0 else 0.0
    if fill >= CIRCLE_FILL:
        return "circle"
    return "square" if fill >= SQUARE_FILL else "triangle"
