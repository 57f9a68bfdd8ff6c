"""No memory: the baseline where S2 sees exactly what S1 sees (the recent window)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.memory.base import MEMORIES, FrameChoice, MemoryUsage, MemoryView, Note
from harness.records import Frame


@dataclass(frozen=True)
class NoneConfig:
    name: str = "none"


@MEMORIES.register("none", NoneConfig)
class NoMemory:
    """Keeps nothing; `expand` returns (), so the system shows S2 the S1 window."""

    needs_tokens = False
    note_every_s = None

    def __init__(self, cfg: NoneConfig) -> None:
        self.cfg = cfg

    def ingest(self, frame: Frame, tokens: torch.Tensor | None) -> None:
        return None

    def add_note(self, note: Note) -> None:
        raise TypeError("memory=none keeps no notes (note_every_s is None, so the system never writes one)")

    def view(self, now_s: float, query_text: str) -> MemoryView:
        return MemoryView(now_s, ())

    def expand(self, view: MemoryView, choice: FrameChoice, max_frames: int) -> tuple[Frame, ...]:
        return ()

    def usage(self) -> MemoryUsage:
        return MemoryUsage(frames=0, tokens=0, bytes=0)
