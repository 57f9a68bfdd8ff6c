"""What every API backend (OpenAI, Anthropic, Google) shares: the key, the response cache, rate limits
one retry policy, cost and typed errors. A provider only translates.

A provider backend subclasses `ApiBackend`, mixes `ApiConfig` into its config, and implements:
  provider: str                    class attribute: "openai", "anthropic", "google"
  payload(request) -> dict         the JSON-serialisable body it sends (model, generation parameters, messages
                                   with base64 images). It is also what the cache key hashes, images included.
  async send(payload) -> Reply     one call of the official SDK, with the SDK's own retries off; every failure
                                   becomes ProviderError(kind, status, message, retry_after_s), without the key
  estimate_tokens(request) -> int  input tokens the provider will count (run.estimate, the token rate limit and
                                   the budget's worst case); from text lengths and frame sizes, never by encoding
`payload` and `estimate_tokens` use only `self.cfg`: they also run on `offline(cfg)` instances (no key, no client).

`generate(request)`: response cache -> budget admission -> [limiter slot -> send] under the retry policy ->
cost from the price table -> cache put -> Response. The cache key is the provider, base_url and the payload,
so a different model, generation parameter, prompt or image byte is a different key; only replies whose
finish reason is complete for the request (`cache_finish_reasons`) are stored, never an error.

Retry policy (the only one: SDK retries are off, so every try is counted here): full jitter, a random wait in
[0, min(cap_s, base_s * 2**(n-1))] before retry n; a server's Retry-After is a floor on the wait (and a
Retry-After above `max_retry_after_s` ends the retries); separate try limits for rate limits, server errors and
timeouts; client errors are never retried. After the last try a typed BackendError (RateLimitError,
ServerError, ApiTimeoutError, ClientError) is raised: the record gets that error, never an answer text.

Batch mode (`batch: true`, backends/batch.py) replaces `_exchange` only: a cache miss goes to the backend's
batch collector, which submits it with others through the provider's batch API (`batch_transport()`), keeps the
batch ids in the job folder and hands the reply back; cache, budget and cost around it stay as they are, at
`price.batch_discount` of the list prices.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from omegaconf import MISSING

from backends.api_limits import Limiter, LimitsConfig
from harness.budget import Budget
from harness.errors import ApiTimeoutError, BackendError, ClientError, ConfigError, RateLimitError, ServerError
from harness.records import Frame, Request, Response
from harness.response_cache import ResponseCache, request_key

if TYPE_CHECKING:
    from backends.batch import BatchCollector, BatchTransport

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 300  # of a provider's own error message, in the typed error
TIMEOUT_GRACE_S = 5.0  # an SDK that ignores its timeout is cut off this much later
KINDS = ("rate_limit", "server", "timeout", "client")


@dataclass(frozen=True)
class RetryConfig:
    rate_limit_tries: int = 8  # tries in all (the first included) while the provider answers 429
    server_tries: int = 4  # ... while it answers 5xx, drops the connection or sends a malformed reply
    timeout_tries: int = 3  # ... while it does not answer within timeout_s
    base_s: float = 1.0  # retry n waits a random time in [0, min(cap_s, base_s * 2**(n-1))] (full jitter)
    cap_s: float = 60.0
    max_retry_after_s: float = 300.0  # a Retry-After longer than this ends the retries instead of waiting

    def __post_init__(self) -> None:
        for name in ("rate_limit_tries", "server_tries", "timeout_tries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"backend.retry.{name}={getattr(self, name)}: must be >= 1 (1: no retry)")
        if self.base_s < 0 or self.cap_s < 0 or self.max_retry_after_s < 0:
            raise ConfigError("backend.retry: base_s, cap_s and max_retry_after_s must be >= 0")

    def tries(self, kind: str) -> int:
        return {"rate_limit": self.rate_limit_tries, "server": self.server_tries, "timeout": self.timeout_tries}.get(
            kind, 1
        )


@dataclass(frozen=True)
class PriceConfig:
    """List prices in dollars per million tokens, for `model` (empty: whatever backend.model is)."""

    model: str = ""  # the model these prices are for; another backend.model leaves its calls uncosted
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    batch_discount: float = 0.5  # calls served by the provider's batch API cost this share of the list prices

    def __post_init__(self) -> None:
        if not 0 <= self.batch_discount <= 1:
            raise ConfigError(f"backend.price.batch_discount={self.batch_discount}: must be in [0, 1]")


@dataclass(frozen=True)
class CapabilitiesConfig:
    """What the model accepts; each field changes the request (or refuses it), so it is part of the job."""

    max_images: int | None = None  # per request; more frames: ClientError before any call (None: no limit)
    max_image_side: int | None = None  # frames are shrunk to at most this, whatever the backend's own setting
    max_image_bytes: int | None = None  # an encoded frame above this: ClientError before any call
    temperature: bool = True  # false: the model rejects a temperature (reasoning models), none is sent


@dataclass(frozen=True)
class ApiConfig:
    """Fields every API backend config has; a provider's config subclasses it and sets name and api_key_env."""

    name: str = ""
    model: str = MISSING  # a dated snapshot where the provider has one, so reruns ask the same model
    api_key_env: str = ""  # the environment variable that holds the key; the key itself is never in a config
    base_url: str | None = None  # None: the provider's own API
    temperature: float = 0.0
    timeout_s: float = 120.0  # per try
    cache: bool = True  # use the run's response cache (run.response_cache)
    # the provider's batch API (backends/batch.py): answers within hours at price.batch_discount; needs the cache
    batch: bool = False
    batch_max_requests: int = 1000  # a batch is submitted once this many requests wait ...
    batch_idle_s: float = 2.0  # ... or once no new request came for this long (every stream waits for an answer)
    batch_poll_s: float = 30.0  # how often a submitted batch's state is read
    batch_timeout_s: float = 86400.0  # this run waits this long for a batch, then stops cleanly; a rerun collects it
    retry: RetryConfig = field(default_factory=RetryConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    price: PriceConfig = field(default_factory=PriceConfig)
    capabilities: CapabilitiesConfig = field(default_factory=CapabilitiesConfig)

    # How a call is made, never what it answers: left out of the job's config hash (harness.config), so a new
    # timeout, key variable, endpoint, rate limit or price keeps the job folder and its records.
    run_only: ClassVar[frozenset[str]] = frozenset(
        {"api_key_env", "base_url", "timeout_s", "cache", "retry", "limits", "price", "batch"}
        | {"batch_max_requests", "batch_idle_s", "batch_poll_s", "batch_timeout_s"}
    )

    def __post_init__(self) -> None:
        if self.batch_max_requests < 1:
            raise ConfigError(f"backend.batch_max_requests={self.batch_max_requests}: must be >= 1")
        for name in ("batch_idle_s", "batch_poll_s", "batch_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"backend.{name}={getattr(self, name)}: must be > 0")


@dataclass(frozen=True)
class Reply:
    """What a provider's `send` returns: the answer and the provider's own token counts."""

    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str
    visual_tokens: int = 0
    confidence: float | None = None  # exp(mean token log-probability), where the provider returned them


class ProviderError(Exception):
    """One failed try, classified: rate_limit (429), server (5xx, connection, malformed reply), timeout, client
    (400, 401, 403, 404, refused content: never retried). `message` must not contain the key."""

    def __init__(self, kind: str, status: int | None, message: str, retry_after_s: float | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"ProviderError kind {kind!r} is not one of {KINDS}")
        super().__init__(message)
        self.kind, self.status, self.message, self.retry_after_s = kind, status, message, retry_after_s


TYPED_ERRORS: dict[str, type[BackendError]] = {
    "rate_limit": RateLimitError,
    "server": ServerError,
    "timeout": ApiTimeoutError,
    "client": ClientError,
}


def status_kind(status: int) -> str:
    """The retry class of an HTTP status."""
    if status == 429:
        return "rate_limit"
    if status == 408:
        return "timeout"
    if status == 409 or status >= 500:
        return "server"
    return "client"


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a server asked to wait: `retry-after-ms`, or `retry-after` in seconds or as an HTTP date."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lowered:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        value = lowered.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def image_side(cfg: ApiConfig, own_max_side: int) -> int:
    """The longer side frames are shrunk to: the backend's own setting, capped by the model's limit."""
    cap = cfg.capabilities.max_image_side
    return own_max_side if cap is None else min(own_max_side, cap)


def api_key(cfg: ApiConfig, provider: str) -> str:
    """The key from the environment variable the config names; ConfigError naming the variable if unset."""
    if not cfg.api_key_env:
        raise ConfigError(f"{provider} backend: backend.api_key_env is empty; name the variable that holds the key")
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        where = cfg.base_url or f"the {provider} API"
        raise ConfigError(
            f"{provider} backend: the environment variable {cfg.api_key_env} is not set or empty. Export it with "
            f"the API key for {where} (a local server started without a key accepts any non-empty value), "
            "or point backend.api_key_env at the variable that holds the key"
        )
    return key


class ApiBackend:
    """The shared half of an API backend; see the module docstring for what a provider adds."""

    provider: ClassVar[str] = ""
    takes_audio: ClassVar[bool] = False
    # complete answers to the request as sent: "length" is the answer cut at max_new_tokens, which is in the key
    cache_finish_reasons: ClassVar[frozenset[str]] = frozenset({"stop", "length"})

    def __init__(self, cfg: ApiConfig) -> None:
        self._setup(cfg)
        self._key = api_key(cfg, self.provider)  # before any work; kept for the SDK client and for scrubbing

    @classmethod
    def offline(cls, cfg: ApiConfig) -> Self:
        """An instance for `payload` and `estimate_tokens` only: no key, no client (run.estimate)."""
        backend = cls.__new__(cls)
        backend._setup(cfg)
        return backend

    # ---- what a provider implements

    def payload(self, request: Request) -> dict[str, Any]:
        raise NotImplementedError

    async def send(self, payload: dict[str, Any]) -> Reply:
        raise NotImplementedError

    def estimate_tokens(self, request: Request) -> int:
        raise NotImplementedError

    def batch_transport(self) -> BatchTransport:
        """The provider's batch API (backends/batch.py `BatchTransport`), for `batch: true`."""
        raise ConfigError(f"backend.batch=true: the {self.provider} backend has no batch API; set backend.batch=false")

    async def aclose(self) -> None:
        """Stop waiting for batches; a provider that opens an SDK client closes it after calling this."""
        if self._batch is not None:
            await self._batch.aclose()

    @property
    def batches_pending(self) -> tuple[str, ...]:
        """Batch ids this run stopped waiting for (backend.batch_timeout_s): a rerun collects them."""
        return () if self._batch is None else tuple(self._batch.pending)

    # ---- the shared part

    def attach(self, cache: ResponseCache | None, budget: Budget, job_dir: Path | None = None) -> None:
        """The runner hands over the job's response cache, budget and folder (batch mode keeps its batch ids
        there: <job>/batches.json) before the first call."""
        if budget.limit_usd is not None and not self.priced:
            raise ConfigError(
                f"run.budget_usd={budget.limit_usd:g}, but backend {self.cfg.name} has no price for model "
                f"{self.cfg.model!r} (backend.price.model={self.cfg.price.model!r}): its calls could not be "
                f"counted. Set backend.price.model={self.cfg.model} with its input_per_mtok and output_per_mtok"
            )
        self._cache = cache if self.cfg.cache else None
        self._budget = budget
        if self.cfg.batch:
            from backends.batch import BatchCollector, Ledger

            if self._cache is None or job_dir is None:
                raise ConfigError(
                    f"backend.batch=true: backend {self.cfg.name} needs the response cache (run.response_cache set, "
                    "backend.cache=true) and a job folder: downloaded batch results are kept there, so a rerun "
                    "collects a batch instead of paying for it again"
                )
            self._batch = BatchCollector(self, self.batch_transport(), Ledger(Path(job_dir)), self._cache, budget)

    async def generate(self, request: Request) -> Response:
        self._check_frames(request)
        payload = await asyncio.to_thread(self.payload, request)  # image encoding is CPU work
        key = None
        if self._cache is not None:
            key = request_key({"provider": self.provider, "base_url": self.cfg.base_url, "payload": payload})
            hit = self._cache.get(key)
            if hit is not None:
                return self._response(Reply(**hit["reply"]), hit["latency_s"], True, hit.get("batch", False))
        elif self.cfg.batch:
            raise ConfigError(f"backend.batch=true: backend {self.cfg.name} was not attached to a job (batch mode)")
        batch = self._batch is not None
        estimate = self.estimate_tokens(request)
        worst = self.cost_usd(estimate, request.max_new_tokens, batch)
        self._budget.admit(worst)  # BudgetExhausted: the stream stops, nothing is recorded for this query
        spent = 0.0
        try:
            if self._batch is not None and key is not None:  # the collector caches and pays what it downloads
                reply, latency_s = await self._batch.ask(key, payload)
            else:
                reply, latency_s = await self._exchange(payload, estimate + request.max_new_tokens)
                spent = self.cost_usd(reply.tokens_in, reply.tokens_out, False)
        finally:
            self._budget.settle(worst, spent)
        if not batch and key is not None and reply.finish_reason in self.cache_finish_reasons:
            self._cache.put(key, {"reply": asdict(reply), "latency_s": latency_s})  # type: ignore[union-attr]
        return self._response(reply, latency_s, False, batch)

    def cost_usd(self, tokens_in: int, tokens_out: int, batch: bool | None = None) -> float:
        """Dollars at the configured list prices, times price.batch_discount for a batch call (batch None: as
        this backend calls, e.g. for run.estimate); 0 where the prices are for another model."""
        if not self.priced:
            return 0.0
        price = self.cfg.price
        share = price.batch_discount if (self.cfg.batch if batch is None else batch) else 1.0
        return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) * share / 1e6

    def check_image_bytes(self, size: int, frame: Frame) -> None:
        """ClientError before any call if an encoded frame is larger than the model accepts."""
        cap = self.cfg.capabilities.max_image_bytes
        if cap is not None and size > cap:
            raise ClientError(
                f"{self.provider} backend: the frame at {frame.time_s:.1f} s encodes to {size} bytes, more than "
                f"model {self.cfg.model} accepts ({cap}, backend.capabilities.max_image_bytes); lower "
                "backend.image_max_side or system.max_side"
            )

    def _setup(self, cfg: ApiConfig) -> None:
        self.cfg = cfg
        self._key = ""
        self._cache: ResponseCache | None = None
        self._budget = Budget(None)
        self._batch: BatchCollector | None = None
        self._limiter = Limiter(cfg.limits)
        self._sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
        self._random = random.Random()
        self.priced = cfg.price.model in ("", cfg.model)
        self.retries: Counter[str] = Counter()  # failed tries that were retried, by kind (the job's manifest)
        if cfg.timeout_s <= 0:
            raise ConfigError(f"{self.provider} backend: backend.timeout_s={cfg.timeout_s}: must be > 0")
        if not self.priced and cfg.base_url is None:
            log.warning(
                "%s backend: backend.price is for %s, not for model %s: its calls are not costed (cost_usd 0). "
                "Set backend.price.model=%s with its prices, or pick a preset (backend=<provider>/<model>)",
                self.provider,
                cfg.price.model,
                cfg.model,
                cfg.model,
            )

    def _check_frames(self, request: Request) -> None:
        cap = self.cfg.capabilities.max_images
        if cap is not None and len(request.frames) > cap:
            route = "s1" if request.route == "S1" else "s2"
            raise ClientError(
                f"{self.provider} backend: the {request.route} request at {request.time_s:.1f} s has "
                f"{len(request.frames)} frames; model {self.cfg.model} accepts at most {cap} per request "
                f"(backend.capabilities.max_images). Lower system.{route}.max_frames to {cap}"
            )

    async def _exchange(self, payload: dict[str, Any], tokens: int) -> tuple[Reply, float]:
        """One reply for the payload under the retry policy; (reply, seconds of the successful try)."""
        failures: Counter[str] = Counter()
        while True:  # ends: every failure counts against its kind's limit, a client error ends at once
            async with self._limiter.slot(tokens) as wave:
                started = time.perf_counter()
                try:
                    reply = await asyncio.wait_for(self.send(payload), self.cfg.timeout_s + TIMEOUT_GRACE_S)
                except ProviderError as e:
                    error = e
                except TimeoutError:
                    error = ProviderError("timeout", None, f"no reply within {self.cfg.timeout_s:g} s")
                except Exception as e:  # a failure the provider did not classify: not retried, key scrubbed
                    raise BackendError(f"{self.provider} backend: {type(e).__name__}: {self._scrub(str(e))}") from None
                else:
                    self._limiter.succeeded()
                    return reply, time.perf_counter() - started
            if error.kind == "rate_limit":
                self._limiter.rate_limited(wave, error.retry_after_s)
            failures[error.kind] += 1
            tries, limit = failures[error.kind], self.cfg.retry.tries(error.kind)
            wait = self._wait_s(tries, error.retry_after_s)
            if error.kind == "client" or tries >= limit or wait is None:
                raise self._give_up(error, tries, limit) from None
            self.retries[error.kind] += 1
            log.warning(
                "%s backend: %s (%s, try %d of %d); retrying in %.2f s",
                self.provider,
                self._scrub(error.message)[:MAX_ERROR_CHARS],
                error.kind,
                tries,
                limit,
                wait,
            )
            await self._sleep(wait)

    def _wait_s(self, tries: int, retry_after: float | None) -> float | None:
        """Full jitter, floored by Retry-After; None when the server asks for longer than we wait."""
        retry = self.cfg.retry
        if retry_after is not None and retry_after > retry.max_retry_after_s:
            return None
        backoff = self._random.uniform(0.0, min(retry.cap_s, retry.base_s * 2 ** (tries - 1)))
        return max(backoff, retry_after or 0.0)

    def _give_up(self, error: ProviderError, tries: int, limit: int) -> BackendError:
        text = self._scrub(error.message)
        text = text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
        if error.kind == "client":
            why = "not retried: the request itself was refused"
        elif error.retry_after_s is not None and error.retry_after_s > self.cfg.retry.max_retry_after_s:
            why = (
                f"the server asked to wait {error.retry_after_s:.0f} s, more than "
                f"backend.retry.max_retry_after_s={self.cfg.retry.max_retry_after_s:g}"
            )
        else:
            why = f"gave up after {tries} tries; backend.retry.{error.kind}_tries={limit}"
        return TYPED_ERRORS[error.kind](f"{self.provider} backend: {text} ({why})")

    def _response(self, reply: Reply, latency_s: float, cached: bool, batch: bool = False) -> Response:
        return Response(
            text=reply.text,
            tokens_in=reply.tokens_in,
            tokens_out=reply.tokens_out,
            latency_s=latency_s,  # of the try that answered (a batch: submit to download; cached: the original)
            finish_reason=reply.finish_reason,
            cost_usd=self.cost_usd(reply.tokens_in, reply.tokens_out, batch),  # the answer's price, cached or not
            visual_tokens=reply.visual_tokens,
            cached=cached,
            confidence=reply.confidence,
        )

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[key]") if self._key else text


def request_texts(request: Request) -> list[str]:
    """Every text a request sends besides frame labels (system, prompt, text memory, earlier turns): what the
    providers' token estimates count."""
    texts = [request.system, request.prompt, *request.context]
    return texts + [t for turn in request.history for t in (turn.question, turn.answer)]
