"""Frame routers; importing this package registers them all."""

from harness.routers import simple  # noqa: F401
from harness.routers.base import ROUTERS, FrameChoice, Router

__all__ = ["ROUTERS", "FrameChoice", "Router"]
