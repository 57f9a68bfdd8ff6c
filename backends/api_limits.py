"""Rate limits of one API backend, shared by every stream of a job: concurrency slots plus request and token
buckets, all scaled by one factor that is lowered on a 429 and recovers by small steps."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from harness.errors import ConfigError

log = logging.getLogger(__name__)

BURST_S = 10.0  # a token bucket holds this many seconds of its per-minute allowance
MIN_SCALE = 0.05  # adaptive limits never drop below this share of the configured ones


@dataclass(frozen=True)
class LimitsConfig:
    """Per backend instance, shared by every stream of the job; lowered on 429, recovered slowly."""

    concurrency: int = 8  # calls in flight at once
    requests_per_minute: int | None = None  # None: no request rate limit of our own
    tokens_per_minute: int | None = None  # input (estimated) + max output tokens per minute; None: none
    decrease: float = 0.5  # on a 429, all three limits are multiplied by this (once per wave of 429s)
    recover_s: float = 30.0  # after this long without a 429, one step back up ...
    recover_step: float = 0.1  # ... of this share of the configured limits

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"backend.limits.concurrency={self.concurrency}: must be >= 1")
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"backend.limits.{name}={value}: must be > 0, or null for no limit")
        if not 0 < self.decrease < 1:
            raise ConfigError(f"backend.limits.decrease={self.decrease}: must be in (0, 1)")
        if self.recover_s < 0 or not 0 < self.recover_step <= 1:
            raise ConfigError("backend.limits: recover_s must be >= 0 and recover_step in (0, 1]")


class Limiter:
    """Concurrency slots plus request and token buckets, all scaled by one factor that halves on a 429 and
    recovers by small steps; shared by every stream of a job. Clock and sleep are injectable for tests."""

    def __init__(
        self,
        cfg: LimitsConfig,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.cfg = cfg
        self._clock, self._sleep = clock, sleep
        self.scale = 1.0
        self.cuts = 0  # how often a 429 lowered the limits
        self._wave = 0  # a 429 lowers the limits only if its call started after the last cut
        self._changed_at = clock()
        self._paused_until = -math.inf
        self._in_flight = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._requests = _Bucket(cfg.requests_per_minute, clock()) if cfg.requests_per_minute else None
        self._tokens = _Bucket(cfg.tokens_per_minute, clock()) if cfg.tokens_per_minute else None

    @property
    def concurrency(self) -> int:
        return max(1, math.floor(self.cfg.concurrency * self.scale + 1e-9))

    @asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[int]:
        """Wait for a free slot, a pause to end and the buckets; yields the wave number for `rate_limited`."""
        while self._in_flight >= self.concurrency:  # woken by every release and every recovery step
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._in_flight += 1
        try:
            await self._pace(tokens)
            yield self._wave
        finally:
            self._in_flight -= 1
            self._wake()

    def rate_limited(self, wave: int, retry_after_s: float | None) -> None:
        """A call of `wave` got a 429: pause everyone for Retry-After, and lower the limits once per wave."""
        now = self._clock()
        if retry_after_s:
            self._paused_until = max(self._paused_until, now + retry_after_s)
        if wave != self._wave:
            return  # sent before the last cut: that cut already answered it
        self._wave += 1
        self.cuts += 1
        self.scale = max(MIN_SCALE, self.scale * self.cfg.decrease)
        self._changed_at = now
        log.warning("rate limited: limits lowered to %s", self.describe())

    def succeeded(self) -> None:
        """A call went through: after recover_s without a cut, one step back up."""
        now = self._clock()
        if self.scale < 1.0 and now - self._changed_at >= self.cfg.recover_s:
            self.scale = min(1.0, self.scale + self.cfg.recover_step)
            self._changed_at = now
            log.info("rate limits recovering: %s", self.describe())
            self._wake()

    def describe(self) -> str:
        parts = [f"concurrency {self.concurrency}"]
        if self.cfg.requests_per_minute:
            parts.append(f"{self.cfg.requests_per_minute * self.scale:.0f} requests/min")
        if self.cfg.tokens_per_minute:
            parts.append(f"{self.cfg.tokens_per_minute * self.scale:.0f} tokens/min")
        return f"{', '.join(parts)} ({self.scale:.0%} of the configured limits)"

    async def _pace(self, tokens: int) -> None:
        while True:  # each pass sleeps until the earliest moment the call may go, so time moves on
            now = self._clock()
            wait = self._paused_until - now
            for bucket, cost in ((self._requests, 1), (self._tokens, tokens)):
                if bucket is not None:
                    wait = max(wait, bucket.wait_s(cost, now, self.scale))
            if wait <= 0:
                for bucket, cost in ((self._requests, 1), (self._tokens, tokens)):
                    if bucket is not None:
                        bucket.level -= cost
                return
            await self._sleep(wait)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()


class _Bucket:
    """A per-minute allowance, refilled continuously, holding at most BURST_S seconds of it. A cost larger
    than the bucket waits for a full bucket and leaves a debt, so the long-run rate still holds."""

    def __init__(self, per_minute: float, now: float) -> None:
        self.per_minute = per_minute
        self.level = per_minute * BURST_S / 60
        self._at = now

    def wait_s(self, cost: float, now: float, scale: float) -> float:
        rate = self.per_minute * scale / 60  # per second
        capacity = rate * BURST_S
        self.level = min(capacity, self.level + (now - self._at) * rate)
        self._at = now
        need = min(cost, capacity)
        return 0.0 if self.level >= need else (need - self.level) / rate
