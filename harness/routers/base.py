"""Frame routers choose which remembered frames S2 shows the model. Pure: no clock, no I/O, no state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from harness.memory.base import MemoryView
from harness.records import Query
from harness.registry import Registry


@dataclass(frozen=True)
class FrameChoice:
    """Positions in the memory view, in time order, with optional relevance scores."""

    indices: tuple[int, ...]
    scores: tuple[float, ...] = ()


class Router(Protocol):
    def select(self, query: Query, memory: MemoryView, max_frames: int) -> FrameChoice: ...


ROUTERS: Registry[Router] = Registry("router")
