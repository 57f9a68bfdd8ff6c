"""Streaming memories; importing this package registers them all."""

from harness.memory import hybrid, keyframe, none, text, window  # noqa: F401
from harness.memory.base import MEMORIES, FrameChoice, Memory, MemoryUsage, MemoryView, Note

__all__ = ["MEMORIES", "FrameChoice", "Memory", "MemoryUsage", "MemoryView", "Note"]
