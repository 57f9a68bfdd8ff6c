"""Streaming memories; importing this package registers them all."""

from harness.memory import window  # noqa: F401
from harness.memory.base import MEMORIES, Memory, MemoryView

__all__ = ["MEMORIES", "Memory", "MemoryView"]
