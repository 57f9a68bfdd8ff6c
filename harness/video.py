"""Frames of a video as a live stream: PyAV decoding, fixed-rate sampling, a reader thread ahead.

Sampling rule: the frame for stream time t is the frame *on screen* at t, i.e. the last decoded
frame whose presentation time is <= t (never the nearest one, which may lie in the future).
Each video is decoded once per stream, sequentially; a background thread keeps a bounded queue
of sampled frames ahead of the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np

from harness.errors import DataError
from harness.records import Frame

_END = object()


def sample_frames(path: str | Path, fps: float, max_side: int = 0) -> Iterator[Frame]:
    """Frames on screen at t = 0, 1/fps, 2/fps, ... up to the last decoded frame's time.

    Raises DataError (with the path and the decoder's message) if the file cannot be decoded.
    """
    if fps <= 0:
        raise ValueError(f"sampling fps must be > 0, got {fps}")
    index = 0
    shown: av.VideoFrame | None = None  # the decoded frame on screen at the current sample time
    pixels: np.ndarray | None = None  # `shown` as RGB, converted only once a sample needs it
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for decoded in container.decode(stream):
                pts_s = float(decoded.pts * stream.time_base) if decoded.pts is not None else 0.0
                # every sample time before this frame's pts shows the previous frame
                while shown is not None and _sample_time(index, fps) < pts_s - 1e-6:
                    pixels = pixels if pixels is not None else _rgb(shown, max_side)
                    yield Frame(index, _sample_time(index, fps), pixels)
                    index += 1
                if shown is None and pts_s > 1e-6:
                    # nothing is on screen before the first frame: start sampling at its pts
                    index = math.ceil(pts_s * fps - 1e-6)
                shown, pixels, last_pts = decoded, None, pts_s
    except (av.FFmpegError, IndexError, OSError) as e:
        raise DataError(f"{path}: cannot decode video: {e}") from None
    if shown is None:
        raise DataError(f"{path}: video has no decodable frames")
    while _sample_time(index, fps) <= last_pts + 1e-6:
        pixels = pixels if pixels is not None else _rgb(shown, max_side)
        yield Frame(index, _sample_time(index, fps), pixels)
        index += 1


class FrameReader:
    """Async iterator over `sample_frames`, decoded by a background thread that stays up to
    `ahead` frames in front of the simulator. Measures decoding CPU time for the overhead benchmark."""

    def __init__(self, path: str | Path, fps: float, max_side: int = 0, ahead: int = 64) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self.decode_s = 0.0
        self._thread = threading.Thread(
            target=self._run, args=(path, fps, max_side), name=f"reader:{Path(path).name}", daemon=True
        )
        self._thread.start()

    def __aiter__(self) -> FrameReader:
        return self

    async def __anext__(self) -> Frame:
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            item = await asyncio.to_thread(self._queue.get)
        if item is _END or isinstance(item, BaseException):
            self._queue.put(_END)  # stay exhausted
            if isinstance(item, BaseException):
                raise item
            raise StopAsyncIteration
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the reader thread (also when the consumer stops early)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(0.01)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_END)  # wakes a get still waiting in a worker thread (a cancelled consumer)

    def _run(self, path: str | Path, fps: float, max_side: int) -> None:
        try:
            frames = sample_frames(path, fps, max_side)
            while not self._stop.is_set():
                started = time.thread_time()  # CPU time of this thread: waiting for the GIL is not decoding
                frame = next(frames, None)
                self.decode_s += time.thread_time() - started
                if frame is None:
                    break
                self._put(frame)
        except Exception as e:  # handed to the consumer, who raises it
            self._put(e)
        self._put(_END)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


def _sample_time(index: int, fps: float) -> float:
    return round(index / fps, 6)


def _rgb(frame: av.VideoFrame, max_side: int) -> np.ndarray:
    pixels = frame.to_ndarray(format="rgb24")
    height, width = pixels.shape[:2]
    if max_side <= 0 or max(height, width) <= max_side:
        return pixels
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
