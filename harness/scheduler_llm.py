"""The `llm` scheduler: asks a model whether the question needs memory of the stream's past (yes: S2, no: S1).

The question goes as a text-only request through any configured backend (`backend@scheduler.backend=...`,
local or API), which the job builds and hands in, with the run's response cache and budget attached: the call
is cached, costed and recorded (the "scheduler" path) like the answers. An unreadable reply or a failed call
routes to `default`, with the reason, so the query is still answered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import BackendError, ConfigError
from harness.records import Query, Request, Route
from harness.scheduler import SCHEDULERS, Decision, RouteName, StreamState

if TYPE_CHECKING:
    from backends.base import Backend

QUESTION = "{question}"
ANSWERS: dict[str, Route] = {"yes": "S2", "no": "S1"}


@dataclass(frozen=True)
class LLMConfig:
    name: str = "llm"
    backend: Any = None  # a backend node (conf/scheduler/llm.yaml: `- /backend@backend: openai`); the job builds it
    prompt: str = (
        "Question about a live video: {question}\n"
        "Does answering this question need memory of what was shown earlier in the video, beyond the last few "
        "seconds? Answer with one word: yes or no."
    )
    system: str = "You decide how a video assistant answers questions about a live video stream."
    max_new_tokens: int = 3
    default: RouteName = RouteName.S1  # the route of an unreadable reply or a failed call


@SCHEDULERS.register("llm", LLMConfig)
class LLMScheduler:
    """Routes by a model's one-word answer: yes (needs the past) to S2, no to S1."""

    needs_backend = True  # the job passes the backend built from cfg.backend, sharing instances with the routes

    def __init__(self, cfg: LLMConfig, backend: Backend) -> None:
        if QUESTION not in cfg.prompt:
            raise ConfigError(f"scheduler=llm: scheduler.prompt must contain {QUESTION} (where the question goes)")
        if cfg.max_new_tokens < 1:
            raise ConfigError(f"scheduler=llm: scheduler.max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
        self.cfg = cfg
        self._backend = backend
        self._default: Route = RouteName(cfg.default).value  # type: ignore[assignment]

    async def route(self, query: Query, state: StreamState) -> Decision:
        prompt = self.cfg.prompt.replace(QUESTION, query.text)
        request = Request(
            query.time_s, "S1", (), prompt, max_new_tokens=self.cfg.max_new_tokens, system=self.cfg.system
        )
        try:
            response = await self._backend.generate(request)
        except BackendError as e:  # nothing answered, nothing to record; the query still goes on
            return Decision(self._default, f"llm: call failed ({type(e).__name__}: {e}), default")
        words = re.findall(r"\w+", response.text.lower())
        word = words[0] if words else ""
        if word in ANSWERS:
            return Decision(ANSWERS[word], f"llm: {word}", calls=(response,))
        shown = response.text.strip()[:40]
        return Decision(self._default, f"llm: unreadable reply {shown!r}, default", calls=(response,))
