"""Frame routers choose which memory candidates S2 shows the model. Pure: no clock, no I/O, no state."""

from __future__ import annotations

from typing import Protocol

import torch

from harness.memory.base import FrameChoice, MemoryView
from harness.registry import Registry


class Router(Protocol):
    needs_tokens: bool  # scores query tokens against candidate tokens (the job then runs the encoder)

    def select(self, query_tokens: torch.Tensor | None, memory: MemoryView, max_frames: int) -> FrameChoice:
        """Pick candidates of `memory` for a query ([S, D] tokens when needs_tokens)."""
        ...


ROUTERS: Registry[Router] = Registry("router")
