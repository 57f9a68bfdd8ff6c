"""LLM judges: open-ended answers scored by a model, through any configured backend.

A judged benchmark (StreamBench, CogStream) turns (query, truth, response) into judge prompts and reads the
judge's raw outputs back into a `Verdict`. The `Judge` sends each prompt as a text-only request (no frames)
to the job's judge backend (`judge=llm backend@judge.backend=<backend>`), and caches every complete output
(finish reason "stop") by (judge config, prompt) in a response cache, so a repeated or resumed sweep never
pays twice for a judgment. A call that fails or an output the benchmark cannot read is a failed judgment:
kept raw in the record, counted in the summary, never replaced by a guess.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from backends.base import BACKENDS, Backend
from harness.records import Query, Request, Truth
from harness.registry import answer_fields
from harness.response_cache import ResponseCache, request_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeConfig:
    name: str = "none"
    backend: Any = None  # a backend node (`backend@judge.backend=openai`); None: no judge
    max_new_tokens: int = 256
    concurrency: int = 4  # judge calls in flight per query


@dataclass(frozen=True)
class JudgePrompt:
    """One question to the judge; `key` names it in the record (e.g. "judgment", or a dimension "IA")."""

    key: str
    user: str
    system: str = ""


@dataclass(frozen=True)
class Verdict:
    """A judged benchmark's reading of the judge's outputs for one answer."""

    score: float  # in [0, 1]; 0 when every judgment failed (the failures are counted)
    subscores: Mapping[str, float] = field(default_factory=dict)
    failed: tuple[str, ...] = ()  # prompt keys whose output could not be read


class JudgedBenchmark(Protocol):
    """What a benchmark scored by an LLM judge adds to `Benchmark` (and `judged = True`)."""

    judged: bool

    def judge_prompts(self, query: Query, truth: Truth, response: str) -> Sequence[JudgePrompt]: ...

    def judge_verdict(self, query: Query, truth: Truth, outputs: Mapping[str, str | None]) -> Verdict:
        """`outputs`: raw output per prompt key, None where the call failed."""
        ...


def is_judged(benchmark: object) -> bool:
    return bool(getattr(benchmark, "judged", False))


class Judge:
    """Sends judge prompts through a backend, with a response cache in front of it."""

    def __init__(self, cfg: JudgeConfig, backend: Backend, cache: ResponseCache | None) -> None:
        self.cfg = cfg
        self._backend = backend
        self._cache = cache
        # what decides the judge's answers, and where they come from (two servers may serve other weights under
        # one model name); its timeout, key variable, retries, limits or prices do not (`run_only` fields)
        self._identity = None
        if cfg.backend is not None:
            config = BACKENDS.parse(cfg.backend).config
            self._identity = {**answer_fields(config), "base_url": getattr(config, "base_url", None)}
        self.calls = 0  # judge calls made (cache misses that reached the backend)
        self.cached = 0  # judgments served from the cache

    async def outputs(self, prompts: Sequence[JudgePrompt]) -> dict[str, str | None]:
        """Raw output per prompt key; None where the call raised (logged, counted by the verdict)."""
        limit = asyncio.Semaphore(self.cfg.concurrency)

        async def one(prompt: JudgePrompt) -> str | None:
            async with limit:
                return await self._ask(prompt)

        texts = await asyncio.gather(*(one(p) for p in prompts))
        return {p.key: text for p, text in zip(prompts, texts, strict=True)}

    async def aclose(self) -> None:
        await self._backend.aclose()
        if self._cache is not None:
            self._cache.close()

    async def _ask(self, prompt: JudgePrompt) -> str | None:
        key = request_key(
            {"judge": self._identity, "system": prompt.system, "user": prompt.user,
             "max_new_tokens": self.cfg.max_new_tokens}
        )  # fmt: skip
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            self.cached += 1
            return hit["text"]
        request = Request(0.0, "S2", (), prompt.user, max_new_tokens=self.cfg.max_new_tokens, system=prompt.system)
        try:
            response = await self._backend.generate(request)
        except Exception as e:  # a failed judgment, counted; the stream goes on
            log.warning("judge: %s failed (%s: %s)", prompt.key, type(e).__name__, e)
            return None
        self.calls += 1
        if self._cache is not None and response.finish_reason == "stop":  # only complete outputs
            self._cache.put(key, {"text": response.text})
        return response.text
