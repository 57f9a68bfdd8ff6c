"""The one interface every model family implements, and the table that names them."""

from __future__ import annotations

from typing import Protocol

from harness.records import Request, Response
from harness.registry import Registry


class Backend(Protocol):
    """Answers one request. Raising is allowed: the runner turns it into an error record."""

    async def generate(self, request: Request) -> Response: ...

    async def aclose(self) -> None: ...


BACKENDS: Registry[Backend] = Registry("backend")
