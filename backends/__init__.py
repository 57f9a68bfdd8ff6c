"""Model backends behind `backends.base.Backend`; importing this package registers them all."""

from backends import anthropic_messages, google_genai, hf, openai_chat, reference, vllm_engine, vllm_server  # noqa: F401
from backends.base import BACKENDS, Backend

__all__ = ["BACKENDS", "Backend"]
