"""Model backends behind `backends.base.Backend`; importing this package registers them all."""

from backends import openai_chat, reference  # noqa: F401
from backends.base import BACKENDS, Backend

__all__ = ["BACKENDS", "Backend"]
