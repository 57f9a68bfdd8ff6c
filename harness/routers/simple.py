"""Content-blind routers: the most recent frames, or frames spread evenly over memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from harness.memory.base import FrameChoice, MemoryView
from harness.routers.base import ROUTERS


@dataclass(frozen=True)
class RecentConfig:
    """The last max_frames frames of memory."""

    name: str = "recent"


@dataclass(frozen=True)
class UniformConfig:
    """max_frames frames evenly spaced from the oldest to the newest remembered frame."""

    name: str = "uniform"


@ROUTERS.register("recent", RecentConfig)
class Recent:
    needs_tokens = False

    def __init__(self, cfg: RecentConfig) -> None:
        self.cfg = cfg

    def select(self, query_tokens: torch.Tensor | None, memory: MemoryView, max_frames: int) -> FrameChoice:
        n = len(memory.frames)
        return FrameChoice(tuple(range(max(0, n - max_frames), n)))


@ROUTERS.register("uniform", UniformConfig)
class Uniform:
    needs_tokens = False

    def __init__(self, cfg: UniformConfig) -> None:
        self.cfg = cfg

    def select(self, query_tokens: torch.Tensor | None, memory: MemoryView, max_frames: int) -> FrameChoice:
        n = len(memory.frames)
        if n <= max_frames:
            return FrameChoice(tuple(range(n)))
        # includes both ends: the oldest memory and the frame on screen now
        picked = np.unique(np.round(np.linspace(0, n - 1, max_frames)).astype(int))
        return FrameChoice(tuple(int(i) for i in picked))
