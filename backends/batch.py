"""Batch mode of the API backends (`backend.batch: true`): requests go through the provider's batch API, at
its batch price, and a run that stops or dies while a batch is being processed never pays for it twice.

A stream's next request may depend on its earlier answers, so requests are not known up front: every cache miss
waits in the backend's `BatchCollector`, which submits what is waiting once `batch_max_requests` are there or no
new request came for `batch_idle_s` (every stream is waiting for an answer). Each request's custom id is its
response-cache key. Right after a submit, before the first poll, the batch id and its keys go to the job's
ledger (<job>/batches.json, written atomically); the batch is then polled every `batch_poll_s`, its results
downloaded, put into the response cache and handed to the waiting callers.

A restarted run reads the ledger on its first request: a request whose key is in a submitted batch is not
submitted again, the run polls that batch and collects it (results nobody asked for yet stay in the cache).
A request that failed inside a batch is submitted again in a later batch, within the retry policy's tries for
its kind (a refused one, never). After `batch_timeout_s` the run stops waiting: the streams stop as they do at a
spent budget (`BatchPending`), their queries unrecorded, the ledger keeping the batch for the next run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from harness.budget import Budget, BudgetExhausted
from harness.errors import BackendError, ClientError
from harness.response_cache import ResponseCache, request_key
from harness.runner.store import write_json

if TYPE_CHECKING:
    from backends.api import ApiBackend, ProviderError, Reply

log = logging.getLogger(__name__)

LEDGER_NAME = "batches.json"
SUBMITTED, COLLECTED, LOST = "submitted", "collected", "lost"
T = TypeVar("T")


class BatchPending(BudgetExhausted):
    """This run stopped waiting for a submitted batch (backend.batch_timeout_s). The stream stops as at a spent
    budget: its query stays unrecorded, and the next run collects the batch from the ledger."""


@dataclass(frozen=True)
class BatchStatus:
    """One poll of a batch."""

    ended: bool  # processing is over: results (of every request, or of some) can be downloaded
    state: str  # the provider's own word for it, for the log and the ledger
    handle: Any = None  # what `results` needs (the provider's batch object)
    refused: str | None = None  # the whole batch was refused (e.g. its input failed validation): why


class BatchTransport(Protocol):
    """One provider's batch API, through its official SDK; every failure is a ProviderError, without the key."""

    async def submit(self, requests: dict[str, dict[str, Any]]) -> str:
        """Submit {custom id: payload}; the batch id."""
        ...

    async def status(self, batch_id: str) -> BatchStatus: ...

    async def results(self, batch_id: str, status: BatchStatus) -> dict[str, Reply | ProviderError]:
        """{custom id: its reply, or its failure}; a request left out has no result."""
        ...


class Ledger:
    """<job>/batches.json: {batch id: {owner, provider, submitted_at, state, keys}}, rewritten atomically on every
    change. `keys` are the requests' custom ids, which are their response-cache keys; `owner` tells the job's
    backends apart (a hash of the config's answer-changing fields). Holds ids and hashes only, never a key."""

    def __init__(self, job_dir: Path) -> None:
        self.path = Path(job_dir) / LEDGER_NAME

    def load(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise BackendError(f"{self.path}: not a JSON batch ledger ({e}); move it away to submit afresh") from None

    def put(self, batch_id: str, **fields: Any) -> None:
        """Add or update one batch (a read, a change and an atomic rewrite, with no await in between)."""
        entries = self.load()
        entries[batch_id] = {**entries.get(batch_id, {}), **fields}
        write_json(self.path, entries)


class BatchCollector:
    """Per backend instance: collects its cache misses into batches, and watches every batch it owns."""

    def __init__(
        self, backend: ApiBackend, transport: BatchTransport, ledger: Ledger, cache: ResponseCache, budget: Budget
    ) -> None:
        self._backend, self._transport, self._ledger = backend, transport, ledger
        self._cache, self._budget = cache, budget
        self.cfg = backend.cfg
        semantic = {k: v for k, v in asdict(self.cfg).items() if k not in self.cfg.run_only}  # type: ignore[call-overload]
        self.owner = request_key(json.loads(json.dumps(semantic, default=str)))[:16]
        self.pending: list[str] = []  # batches this run stopped waiting for
        self._waiting: dict[str, list[asyncio.Future[tuple[Reply, float]]]] = {}  # key -> its callers
        self._payloads: dict[str, dict[str, Any]] = {}  # key -> payload, while someone waits for it
        self._queued: list[str] = []  # keys not submitted yet
        self._in_batch: dict[str, str] = {}  # key -> the batch it is in ("" while being submitted)
        self._collected: dict[str, tuple[Reply, float]] = {}  # results nobody asked for yet (e.g. not cacheable)
        self._failures: dict[str, Counter[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._started = self._stopped = False

    async def ask(self, key: str, payload: dict[str, Any]) -> tuple[Reply, float]:
        """The reply for one request (cache key `key`), and the seconds from its batch's submit to its download."""
        from backends.api import Reply

        self._start()
        if key in self._collected:
            return self._collected.pop(key)
        hit = self._cache.get(key)
        if hit is not None:  # collected by a batch since the caller looked
            return Reply(**hit["reply"]), hit["latency_s"]
        if self._stopped or self._in_batch.get(key) in self.pending:
            raise BatchPending(self._pending_text())
        future: asyncio.Future[tuple[Reply, float]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        self._payloads[key] = payload
        if key not in self._in_batch and key not in self._queued:
            self._queue(key)
        return await future

    async def aclose(self) -> None:
        """Stop waiting: timers and watchers end; submitted batches stay in the ledger for the next run."""
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for futures in self._waiting.values():
            for future in futures:
                future.cancel()

    # ---- submitting

    def _start(self) -> None:
        """On the first request: re-attach to this backend's submitted batches that no run collected."""
        if self._started:
            return
        self._started = True
        for batch_id, entry in self._ledger.load().items():
            if entry.get("owner") == self.owner and entry.get("state") == SUBMITTED:
                keys = list(entry.get("keys", []))
                self._in_batch.update(dict.fromkeys(keys, batch_id))
                log.info("%s backend: re-attaching to batch %s (%d requests)", self._name, batch_id, len(keys))
                self._spawn(self._watch(batch_id, keys, float(entry.get("submitted_at", time.time()))), keys)

    def _queue(self, key: str) -> None:
        self._queued.append(key)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if len(self._queued) >= self.cfg.batch_max_requests:
            self._flush()
        else:  # no request for batch_idle_s: every stream waits, so nothing more is coming
            self._timer = asyncio.get_running_loop().call_later(self.cfg.batch_idle_s, self._flush)

    def _flush(self) -> None:
        self._timer = None
        while self._queued:
            keys = self._queued[: self.cfg.batch_max_requests]
            del self._queued[: len(keys)]
            self._in_batch.update(dict.fromkeys(keys, ""))
            self._spawn(self._submit(keys), keys)

    async def _submit(self, keys: list[str]) -> None:
        requests = {key: self._payloads[key] for key in keys}
        try:
            batch_id = await self._call("submit", lambda: self._transport.submit(requests))
        except BackendError as e:
            for key in keys:
                self._in_batch.pop(key, None)
                self._reject(key, e)
            return
        submitted_at = time.time()
        self._ledger.put(
            batch_id,
            owner=self.owner,
            provider=self._backend.provider,
            model=self.cfg.model,
            submitted_at=submitted_at,
            state=SUBMITTED,
            keys=keys,
        )  # before the first poll: a run that dies while waiting leaves what the next one needs
        self._in_batch.update(dict.fromkeys(keys, batch_id))
        log.info("%s backend: submitted batch %s (%d requests)", self._name, batch_id, len(keys))
        await self._watch(batch_id, keys, submitted_at)

    # ---- waiting and collecting

    async def _watch(self, batch_id: str, keys: list[str], submitted_at: float) -> None:
        deadline = time.monotonic() + self.cfg.batch_timeout_s
        try:
            for _ in range(math.ceil(self.cfg.batch_timeout_s / self.cfg.batch_poll_s) + 1):  # and the deadline
                status = await self._call("poll", lambda: self._transport.status(batch_id))
                if status.ended or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(self.cfg.batch_poll_s)
            if not status.ended:
                return self._stop(batch_id, status.state)
            results = await self._call("download", lambda: self._transport.results(batch_id, status))
        except BackendError as e:  # the batch could not be read: its requests fail; a client error means it is gone
            if isinstance(e, ClientError):
                self._ledger.put(batch_id, state=LOST, error=str(e))
            for key in keys:
                self._in_batch.pop(key, None)
                self._reject(key, e)
            return
        self._ledger.put(batch_id, state=COLLECTED, collected_at=time.time(), provider_state=status.state)
        latency_s = max(0.0, time.time() - submitted_at)
        log.info("%s backend: batch %s %s: %d results", self._name, batch_id, status.state, len(results))
        for key in keys:
            self._in_batch.pop(key, None)
            outcome = results.get(key)
            if outcome is None:
                why = status.refused or f"batch {batch_id} ({status.state}) has no result for request {key[:12]}"
                self._failed(key, self._error("client" if status.refused else "server", why))
            elif isinstance(outcome, Exception):
                self._failed(key, outcome)
            else:
                self._collect(key, outcome, latency_s)

    def _collect(self, key: str, reply: Reply, latency_s: float) -> None:
        backend = self._backend
        self._budget.settle(0.0, backend.cost_usd(reply.tokens_in, reply.tokens_out, batch=True))  # paid now
        if reply.finish_reason in backend.cache_finish_reasons:
            self._cache.put(key, {"reply": asdict(reply), "latency_s": latency_s, "batch": True})
        futures = self._waiting.pop(key, [])
        self._payloads.pop(key, None)
        if not futures and reply.finish_reason not in backend.cache_finish_reasons:
            self._collected[key] = (reply, latency_s)
        for future in futures:
            if not future.done():
                future.set_result((reply, latency_s))

    def _failed(self, key: str, error: ProviderError) -> None:
        """A request that failed inside a batch: into a later batch, within its kind's tries; else its error."""
        if self._stopped:  # this run submits nothing more
            self._reject(key, BatchPending(self._pending_text()))
            return
        failures = self._failures.setdefault(key, Counter())
        failures[error.kind] += 1
        tries, limit = failures[error.kind], self.cfg.retry.tries(error.kind)
        if error.kind == "client" or tries >= limit or key not in self._waiting:
            self._reject(key, self._backend._give_up(error, tries, limit))
            return
        self._backend.retries[error.kind] += 1
        log.warning(
            "%s backend: request %s failed in its batch (%s, try %d of %d): submitting it again",
            self._name,
            key[:12],
            self._backend._scrub(error.message)[:300],
            tries,
            limit,
        )
        self._queue(key)

    def _reject(self, key: str, error: BaseException) -> None:
        self._payloads.pop(key, None)
        for future in self._waiting.pop(key, []):
            if not future.done():
                future.set_exception(error)

    def _stop(self, batch_id: str, state: str) -> None:
        """batch_timeout_s passed: this run stops (sticky), the batch stays in the ledger as submitted."""
        self._stopped = True
        self.pending.append(batch_id)
        log.warning(
            "%s backend: batch %s is still %s after backend.batch_timeout_s=%g s: stopping; run the job again "
            "to collect it (its id is in %s)",
            self._name,
            batch_id,
            state,
            self.cfg.batch_timeout_s,
            self._ledger.path,
        )
        for key, in_batch in list(self._in_batch.items()):
            if in_batch == batch_id:
                self._reject(key, BatchPending(self._pending_text()))
        for key in list(self._waiting):  # queued, not submitted: this run submits nothing more
            if key not in self._in_batch:
                self._queued = [k for k in self._queued if k != key]
                self._reject(key, BatchPending(self._pending_text()))

    def _pending_text(self) -> str:
        return (
            f"batches {', '.join(self.pending) or '(none)'} not finished within backend.batch_timeout_s="
            f"{self.cfg.batch_timeout_s:g} s; run the job again to collect them"
        )

    # ---- plumbing

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One batch-API call under the backend's retry policy; a typed BackendError after the last try."""
        from backends.api import TIMEOUT_GRACE_S, ProviderError

        backend = self._backend
        failures: Counter[str] = Counter()
        while True:  # ends: every failure counts against its kind's limit, a client error ends at once
            try:
                return await asyncio.wait_for(call(), self.cfg.timeout_s + TIMEOUT_GRACE_S)
            except ProviderError as e:
                error = e
            except TimeoutError:
                error = ProviderError("timeout", None, f"no reply to the batch {what} within {self.cfg.timeout_s:g} s")
            except Exception as e:  # a failure the provider did not classify: not retried, key scrubbed
                text = backend._scrub(str(e))
                raise BackendError(f"{self._name} backend: batch {what}: {type(e).__name__}: {text}") from None
            failures[error.kind] += 1
            tries, limit = failures[error.kind], self.cfg.retry.tries(error.kind)
            wait = backend._wait_s(tries, error.retry_after_s)
            if error.kind == "client" or tries >= limit or wait is None:
                raise backend._give_up(error, tries, limit) from None
            backend.retries[error.kind] += 1
            log.warning("%s backend: batch %s failed (%s); retrying in %.2f s", self._name, what, error.kind, wait)
            await backend._sleep(wait)

    def _error(self, kind: str, message: str) -> ProviderError:
        from backends.api import ProviderError

        return ProviderError(kind, None, message)

    def _spawn(self, work: Awaitable[None], keys: list[str]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(done, keys))

    def _done(self, task: asyncio.Task[None], keys: list[str]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()  # a bug: its callers get an error record, never a hang
        log.error("%s backend: batch handling failed: %r", self._name, error)
        for key in keys:
            self._in_batch.pop(key, None)
            self._reject(key, BackendError(f"{self._name} backend: batch handling failed: {error!r}"))

    @property
    def _name(self) -> str:
        return self._backend.provider
