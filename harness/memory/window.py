"""Sliding-window memory: keep every stream frame of the last window_s seconds."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from harness.memory.base import MEMORIES, MemoryView
from harness.records import Frame


@dataclass(frozen=True)
class WindowConfig:
    name: str = "window"
    window_s: float = 600.0  # frames older than this are forgotten
    max_frames: int = 4096  # hard cap, the oldest go first


@MEMORIES.register("window", WindowConfig)
class Window:
    def __init__(self, cfg: WindowConfig) -> None:
        self.cfg = cfg
        self._frames: deque[Frame] = deque(maxlen=cfg.max_frames)

    def ingest(self, frame: Frame) -> None:
        self._frames.append(frame)
        while self._frames and self._frames[0].time_s < frame.time_s - self.cfg.window_s:
            self._frames.popleft()

    def view(self, now_s: float) -> MemoryView:
        return MemoryView(now_s, tuple(f for f in self._frames if f.time_s <= now_s))
