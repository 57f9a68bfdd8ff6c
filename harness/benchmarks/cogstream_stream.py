"""One CogStream video as one stream: its event segments concatenated into a single file, built once.

CogStream ships each video as consecutive event segments (`<video>_segment_<n>.mp4`), and its official
inference shows them one after another in a growing conversation. A harness stream is one video file, so the
segments are decoded in order and re-encoded into one MP4 of `fps` frames per second: the frame on screen at
each tick of the concatenated timeline (what the harness's own sampler takes), at the first segment's size
(its longer side capped at `max_side` when set). Re-encoding, not remuxing: segments may differ in size and
codec parameters. The file is named by a digest of its inputs (segment names and sizes, fps, size cap,
builder version), written beside its final place and moved there in one rename; a JSON sidecar beside it maps
every segment to its span in the stream, so a later load reads only the sidecar.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av

from harness.errors import DataError

log = logging.getLogger(__name__)

BUILDER_VERSION = 1  # bump when the builder changes what it writes: the file names change too
EPS_S = 1e-6
CRF = "18"  # near-transparent x264 quality: the harness downsizes frames again anyway


@dataclass(frozen=True)
class SegmentSpan:
    """Where one segment lies in the stream."""

    file: str  # the segment's file name
    start_s: float  # its first frame
    end_s: float  # where the next segment starts
    last_s: float  # the last tick before end_s: the latest time whose frame is from this or an earlier segment


@dataclass(frozen=True)
class BuiltStream:
    path: Path
    duration_s: float
    segments: tuple[SegmentSpan, ...]


class BrokenSegment(DataError):
    """A segment that does not decode; `path` names it, so the pre-sweep check can report it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: cannot decode the segment: {problem}")
        self.path = path


def built_stream(segments: Sequence[Path], cache_dir: Path, name: str, fps: float, max_side: int) -> BuiltStream:
    """The stream of `segments` in order, built into `cache_dir` on first use (BrokenSegment if one fails)."""
    spec = {
        "builder": BUILDER_VERSION,
        "fps": float(fps),
        "max_side": int(max_side),
        "sources": [[p.name, p.stat().st_size] for p in segments],
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    path = cache_dir / f"{name}-{digest}.mp4"
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file():
        saved = json.loads(sidecar.read_text())
        return BuiltStream(path, saved["duration_s"], tuple(SegmentSpan(**s) for s in saved["segments"]))
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("building %s from %d segments (once)", path, len(segments))
    fd, staging = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".mp4", dir=cache_dir)
    os.close(fd)
    try:
        spans, frames = _concatenate(segments, Path(staging), Fraction(fps).limit_denominator(1000), max_side)
        os.chmod(staging, 0o644)  # mkstemp makes it private; the data is meant to be shared
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)
    stream = BuiltStream(path, frames / fps, spans)
    _write_json(sidecar, {**spec, "duration_s": stream.duration_s, "segments": [asdict(s) for s in spans]})
    return stream


def _concatenate(
    segments: Sequence[Path], out_path: Path, rate: Fraction, max_side: int
) -> tuple[tuple[SegmentSpan, ...], int]:
    """Write the ticks of the concatenated timeline to `out_path`; returns the spans and the frame count."""
    spans: list[SegmentSpan] = []
    tick, offset, shown = 0, 0.0, None
    with av.open(str(out_path), "w", format="mp4") as out:
        stream = None
        for path in segments:
            start, last_rel, step = offset, 0.0, 0.0
            for frame, rel, frame_s in _frames(path):
                if stream is None:
                    stream = _video_stream(out, rate, frame.width, frame.height, max_side)
                while shown is not None and tick / rate < offset + rel - EPS_S:
                    _encode(out, stream, shown, tick, rate)
                    tick += 1
                shown = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
                last_rel, step = rel, frame_s
            end = offset + last_rel + step
            while tick / rate < end - EPS_S:  # the segment's last frame stays on screen until it ends
                _encode(out, stream, shown, tick, rate)
                tick += 1
            spans.append(SegmentSpan(path.name, start, end, max(tick - 1, 0) / float(rate)))
            offset = end
        assert stream is not None  # every segment yielded a frame
        for packet in stream.encode():
            out.mux(packet)
    return tuple(spans), tick


def _frames(path: Path) -> Iterator[tuple[av.VideoFrame, float, float]]:
    """(frame, seconds since the segment's first frame, one frame's duration) of every decoded frame."""
    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            video.thread_type = "AUTO"
            step = 1.0 / float(video.average_rate) if video.average_rate else 0.0
            first, count = None, 0
            for frame in container.decode(video):
                pts = float(frame.pts * video.time_base) if frame.pts is not None else count * step
                first = pts if first is None else first
                count += 1
                yield frame, pts - first, step
    except (av.FFmpegError, IndexError, OSError) as e:
        raise BrokenSegment(path, str(e)) from None
    if count == 0:
        raise BrokenSegment(path, "no decodable frame")


def _video_stream(out: av.container.OutputContainer, rate: Fraction, width: int, height: int, max_side: int):  # noqa: ANN202
    scale = min(1.0, max_side / max(width, height)) if max_side > 0 else 1.0
    stream = out.add_stream("libx264", rate=rate)
    stream.width = max(2, math.floor(width * scale / 2) * 2)  # yuv420p wants even sides
    stream.height = max(2, math.floor(height * scale / 2) * 2)
    stream.pix_fmt = "yuv420p"
    stream.codec_context.options = {"preset": "veryfast", "crf": CRF}
    return stream


def _encode(out: av.container.OutputContainer, stream, frame: av.VideoFrame, tick: int, rate: Fraction) -> None:  # noqa: ANN001
    frame.pts, frame.time_base = tick, 1 / rate
    for packet in stream.encode(frame):
        out.mux(packet)


def _write_json(path: Path, value: dict) -> None:
    """Beside its final place, then one rename: a reader never sees half a sidecar."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(json.dumps(value, indent=1))
    os.replace(staging, path)
