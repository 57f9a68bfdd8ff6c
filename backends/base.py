"""The one interface every model family implements, and the table that names them."""

from __future__ import annotations

from typing import Protocol

from harness.records import Request, Response
from harness.registry import Registry


class Backend(Protocol):
    """Answers one request. Raising is allowed: the runner turns it into an error record.

    Optional class attributes, read with getattr (absent = False): `takes_audio` (the model hears the video's
    audio), `gives_confidence` (sets Response.confidence from token log-probabilities when a request asks),
    `models_latency` (sets Response.modelled_latency_s from a latency model of its own).
    """

    async def generate(self, request: Request) -> Response: ...

    async def aclose(self) -> None: ...


BACKENDS: Registry[Backend] = Registry("backend")
