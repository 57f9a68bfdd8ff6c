"""Frame sampling picks exactly the frame on screen at each stream time."""

from __future__ import annotations

import asyncio
import math
from fractions import Fraction

import pytest

from harness.errors import DataError
from harness.video import FrameReader, sample_frames
from tests.conftest import read_barcode


def test_samples_the_frame_on_screen_at_each_time(barcode_video_10fps):
    frames = list(sample_frames(barcode_video_10fps, fps=2.0))
    assert [f.time_s for f in frames[:4]] == [0.0, 0.5, 1.0, 1.5]
    assert [read_barcode(f.pixels) for f in frames] == [5 * i for i in range(len(frames))]
    assert frames[-1].time_s <= 7.9  # never past the last frame's presentation time


def test_non_integer_rates_floor_never_round(barcode_video_ntsc):
    rate = Fraction(30000, 1001)
    frames = list(sample_frames(barcode_video_ntsc, fps=4.0))
    for frame in frames:
        # the last frame whose pts <= t; nearest-frame rounding would pick k+1 at t = 0.75 s etc.
        assert read_barcode(frame.pixels) == math.floor(frame.time_s * rate + 1e-9), frame.time_s
    assert any(round(f.time_s * rate) != math.floor(f.time_s * rate) for f in frames)


def test_max_side_resizes_keeping_aspect(barcode_video_10fps):
    frame = next(iter(sample_frames(barcode_video_10fps, fps=1.0, max_side=96)))
    assert frame.pixels.shape == (32, 96, 3)


def test_reader_thread_yields_the_same_frames(barcode_video_10fps):
    async def collect():
        reader = FrameReader(barcode_video_10fps, fps=3.0, ahead=4)
        try:
            return [f async for f in reader], reader.decode_s
        finally:
            reader.close()

    frames, decode_s = asyncio.run(collect())
    expected = list(sample_frames(barcode_video_10fps, fps=3.0))
    assert [f.time_s for f in frames] == [f.time_s for f in expected]
    assert [read_barcode(f.pixels) for f in frames] == [read_barcode(f.pixels) for f in expected]
    assert decode_s > 0


def test_missing_and_corrupt_videos_name_the_path(tmp_path):
    with pytest.raises(DataError, match="nothing.mp4"):
        list(sample_frames(tmp_path / "nothing.mp4", fps=1.0))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(DataError, match="corrupt.mp4"):
        list(sample_frames(corrupt, fps=1.0))


def test_reader_hands_decoder_errors_to_the_consumer(tmp_path):
    async def first():
        reader = FrameReader(tmp_path / "missing.mp4", fps=1.0)
        try:
            return await anext(reader)
        finally:
            reader.close()

    with pytest.raises(DataError, match="missing.mp4"):
        asyncio.run(first())
