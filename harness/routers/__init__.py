"""Frame routers; importing this package registers them all."""

from harness.memory.base import FrameChoice
from harness.routers import cos_sim, cross_attn, indexer, simple  # noqa: F401
from harness.routers.base import ROUTERS, Router

__all__ = ["ROUTERS", "FrameChoice", "Router"]
