"""Streaming memory: what a stream keeps of its past frames for S2. State is per stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from harness.records import Frame
from harness.registry import Registry


@dataclass(frozen=True)
class MemoryView:
    """A read-only snapshot at now_s: frames in time order, each with time_s <= now_s."""

    now_s: float
    frames: tuple[Frame, ...]

    def times_s(self) -> tuple[float, ...]:
        return tuple(f.time_s for f in self.frames)


class Memory(Protocol):
    def ingest(self, frame: Frame) -> None: ...

    def view(self, now_s: float) -> MemoryView:
        """Snapshot for a query at now_s; never contains a frame from after now_s."""
        ...


MEMORIES: Registry[Memory] = Registry("memory")
