"""Sliding-window memory: keep every stream frame of the last window_s seconds."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from harness.memory.base import (
    MEMORIES,
    FrameChoice,
    MemoryUsage,
    MemoryView,
    Note,
    expand_frames,
    frame_bytes,
    stack,
    tokens_bytes,
)
from harness.records import Frame


@dataclass(frozen=True)
class WindowConfig:
    name: str = "window"
    window_s: float = 600.0  # frames older than this are forgotten
    max_frames: int = 4096  # hard cap, the oldest go first


@MEMORIES.register("window", WindowConfig)
class Window:
    needs_tokens = False
    note_every_s = None

    def __init__(self, cfg: WindowConfig) -> None:
        self.cfg = cfg
        self._kept: deque[tuple[Frame, torch.Tensor | None]] = deque(maxlen=cfg.max_frames)

    def ingest(self, frame: Frame, tokens: torch.Tensor | None) -> None:
        self._kept.append((frame, tokens))
        while self._kept and self._kept[0][0].time_s < frame.time_s - self.cfg.window_s:
            self._kept.popleft()

    def add_note(self, note: Note) -> None:
        raise TypeError("window memory keeps no notes")

    def view(self, now_s: float, query_text: str) -> MemoryView:
        kept = [(f, t) for f, t in self._kept if f.time_s <= now_s]
        tokens = [t for _, t in kept if t is not None]
        return MemoryView(now_s, tuple(f for f, _ in kept), stack(tokens) if len(tokens) == len(kept) else None)

    def expand(self, view: MemoryView, choice: FrameChoice, max_frames: int) -> tuple[Frame, ...]:
        return expand_frames(view, choice, max_frames)

    def usage(self) -> MemoryUsage:
        n_tokens = sum(0 if t is None else t.shape[0] for _, t in self._kept)
        size = sum(frame_bytes(f) + tokens_bytes(t) for f, t in self._kept)
        return MemoryUsage(frames=len(self._kept), tokens=n_tokens, bytes=size)
