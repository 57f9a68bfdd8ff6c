"""Frame and query encoders; importing this package registers them all."""

from harness.encoders import backend_vision, clip, patch_color  # noqa: F401
from harness.encoders.base import ENCODERS, Encoder

__all__ = ["ENCODERS", "Encoder"]
