"""Scenes of the synthetic benchmark: where each shape is when, drawn and encoded as H.264.

Split from `synthetic` so the adapter reads as questions and files while this reads as pixels.
Every object moves in its own horizontal lane, so shapes never overlap and a colour detector
sees each one whole. The background is a low-saturation texture that pans and changes brightness,
so a detector cannot just threshold on "not background" and compression has real work to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {  # fully saturated RGB, 30 apart in OpenCV hue
    "red": (255, 0, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "magenta": (255, 0, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
DISTRACTOR = "grey"  # the colour field of an unsaturated distractor track

LIFETIME_S = (1.5, 6.0)  # how long a coloured object stays on screen
DISTRACTOR_LIFETIME_S = (5.0, 12.0)
LANE_GAP_S = 0.5  # a lane stays empty this long between two objects
GOP_S = 2.0
CRF = 20


@dataclass(frozen=True)
class Track:
    """One object's whole life: what it is, when it is on screen and how it moves."""

    colour: str  # a COLOURS key, or DISTRACTOR
    shape: str
    appear_s: float  # on the frame grid: first frame showing it
    disappear_s: float  # on the frame grid: first frame no longer showing it
    lane: int
    x_start: float  # centre x at appear_s
    speed_px_s: float  # signed horizontal speed
    spin_deg_s: float
    grey: int = 0  # brightness of a distractor

    @property
    def is_distractor(self) -> bool:
        return self.colour == DISTRACTOR

    def frames(self, fps: float) -> range:
        """Indices of the frames that show this object."""
        return range(round(self.appear_s * fps), round(self.disappear_s * fps))


def lane_centres(height: int, object_size: int) -> list[int]:
    """Vertical centres of lanes far enough apart that shapes of adjacent lanes never touch."""
    spacing = math.ceil(1.3 * object_size)
    count = (height - 4) // spacing
    top = (height - count * spacing) // 2 + spacing // 2
    return [top + i * spacing for i in range(count)]


def plan_tracks(
    rng: np.random.Generator,
    *,
    duration_s: float,
    fps: float,
    width: int,
    height: int,
    objects: int,
    object_size: int,
    distractors: int,
) -> list[Track]:
    """Coloured objects with unique (colour, shape) pairs, then distractors, each in a free lane."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:objects]]
    kinds = chosen + [(DISTRACTOR, SHAPES[int(rng.integers(len(SHAPES)))]) for _ in range(distractors)]
    lanes = lane_centres(height, object_size)
    busy: list[list[tuple[float, float]]] = [[] for _ in lanes]
    tracks = []
    for colour, shape in kinds:
        low, high = DISTRACTOR_LIFETIME_S if colour == DISTRACTOR else LIFETIME_S
        for _ in range(500):
            life = rng.uniform(low, min(high, duration_s / 3))
            appear = _on_grid(rng.uniform(0.5, duration_s - life - 0.5), fps)
            disappear = _on_grid(appear + life, fps)
            free = [
                i
                for i, spans in enumerate(busy)
                if all(disappear + LANE_GAP_S <= a or appear >= d + LANE_GAP_S for a, d in spans)
            ]
            if free:
                break
        else:
            raise ValueError(f"cannot place {len(kinds)} objects in {len(lanes)} lanes of a {duration_s} s video")
        lane = int(rng.choice(free))
        busy[lane].append((appear, disappear))
        margin = 0.65 * object_size + 2
        travel = min(rng.uniform(5.0, 30.0) * (disappear - appear), width - 2 * margin)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        x_start = rng.uniform(margin, width - margin - travel)
        if direction < 0:
            x_start += travel
        tracks.append(
            Track(
                colour=colour,
                shape=shape,
                appear_s=appear,
                disappear_s=disappear,
                lane=lane,
                x_start=float(x_start),
                speed_px_s=float(direction * travel / (disappear - appear)),
                spin_deg_s=float(rng.uniform(-40.0, 40.0)),
                grey=int(rng.integers(140, 256)) if colour == DISTRACTOR else 0,
            )
        )
    return tracks


def render_video(
    path: Path,
    tracks: list[Track],
    rng: np.random.Generator,
    *,
    duration_s: float,
    fps: float,
    width: int,
    height: int,
    object_size: int,
) -> None:
    """Draw every frame and encode it to an H.264 mp4 at `path`."""
    background = _Background(rng, width, height, duration_s)
    lanes = lane_centres(height, object_size)
    by_frame: dict[int, list[Track]] = {}
    for track in tracks:
        for k in track.frames(fps):
            by_frame.setdefault(k, []).append(track)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = max(1, round(GOP_S * fps))
        stream.codec_context.thread_count = 1  # fixed, so the bytes do not depend on the machine
        stream.codec_context.options = {"preset": "veryfast", "crf": str(CRF)}
        for k in range(round(duration_s * fps)):
            t = k / fps
            pixels = background.at(t)
            for track in by_frame.get(k, ()):
                _draw(pixels, track, t, lanes[track.lane], object_size)
            yuv = cv2.cvtColor(
                pixels, cv2.COLOR_RGB2YUV_I420
            )  # BT.601 limited, as decoders assume; faster than swscale
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = k
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def shape_outline(shape: str, cx: float, cy: float, size: int, angle_deg: float) -> np.ndarray:
    """Polygon vertices (int32, N x 2) of a shape whose bounding circle is about 1.2 * size wide."""
    a = math.radians(angle_deg)
    if shape == "circle":
        radii, n = [0.48 * size], 48
    elif shape == "square":
        radii, n = [0.42 * size * math.sqrt(2)], 4
    elif shape == "triangle":
        radii, n = [0.6 * size], 3
    elif shape == "star":
        radii, n = [0.6 * size, 0.25 * size], 10
    else:
        raise ValueError(f"unknown shape {shape!r}")
    angles = a + np.arange(n) * 2 * math.pi / n
    r = np.resize(np.array(radii), n)
    points = np.stack([cx + r * np.sin(angles), cy - r * np.cos(angles)], axis=1)
    return np.round(points).astype(np.int32)


class _Background:
    """A large smooth grey-brown texture, cropped at a slowly panning offset, with drifting brightness."""

    PAN_PX = 24

    def __init__(self, rng: np.random.Generator, width: int, height: int, duration_s: float) -> None:
        h, w = height + 2 * self.PAN_PX, width + 2 * self.PAN_PX
        luma = np.zeros((h, w), np.float32)
        for cell, weight in ((48, 0.55), (16, 0.3), (5, 0.15)):
            coarse = rng.random((h // cell + 2, w // cell + 2), dtype=np.float32)
            luma += weight * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        luma = (luma - luma.min()) / max(float(luma.max() - luma.min()), 1e-6)
        tint = np.array([1.0, rng.uniform(0.88, 0.97), rng.uniform(0.78, 0.9)], np.float32)
        self.texture = np.clip((55 + 130 * luma)[..., None] * tint, 0, 255).astype(np.uint8)
        self.width, self.height = width, height
        self.pan_period_s = rng.uniform(0.6, 1.0) * max(duration_s, 20.0)
        self.light_period_s = rng.uniform(0.3, 0.5) * max(duration_s, 20.0)
        self.phase = rng.uniform(0, 2 * math.pi, size=3)

    def at(self, t: float) -> np.ndarray:
        """The background at time t: a fresh writable RGB array."""
        ox = round(self.PAN_PX * (1 + math.sin(2 * math.pi * t / self.pan_period_s + self.phase[0])))
        oy = round(self.PAN_PX * (1 + math.sin(2 * math.pi * t / (1.7 * self.pan_period_s) + self.phase[1])))
        gain = 1.0 + 0.2 * math.sin(2 * math.pi * t / self.light_period_s + self.phase[2])
        crop = self.texture[oy : oy + self.height, ox : ox + self.width]
        return cv2.convertScaleAbs(crop, alpha=gain)


def _draw(pixels: np.ndarray, track: Track, t: float, cy: int, object_size: int) -> None:
    cx = track.x_start + track.speed_px_s * (t - track.appear_s)
    angle = track.spin_deg_s * (t - track.appear_s)
    rgb = (track.grey,) * 3 if track.is_distractor else COLOURS[track.colour]
    cv2.fillPoly(pixels, [shape_outline(track.shape, cx, cy, object_size, angle)], rgb, cv2.LINE_AA)


def _on_grid(t: float, fps: float) -> float:
    """t rounded to the nearest frame time."""
    return round(t * fps) / fps
