"""The shared API layer through the real openai SDK against a local server that counts every request: retries and
their limits, Retry-After, typed error records, the response cache across repeated and resumed jobs, keys never
on disk, run.estimate and run.budget_usd. Everything stays on 127.0.0.1; backoff is tiny, every wait is bounded."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backends.base import BACKENDS
from harness.benchmarks.base import DATASETS
from harness.budget import BudgetExhausted
from harness.errors import ApiTimeoutError, ClientError, ConfigError, RateLimitError, ServerError
from harness.records import Frame, Request, Response
from harness.registry import Choice
from harness.response_cache import ResponseCache
from harness.runner import store
from harness.runner.job import run_job
from tests.fixtures.openai_server import Reply, image_urls
from tests.helpers import compose_job, run_sweep

KEY_ENV = "HARNESS_TEST_API_KEY"
KEY = "sk-test-a9b8c7d6e5f40312"
FAST_RETRY = {"base_s": 0.001, "cap_s": 0.01}
# 20 queries of every kind, few frames per call: seconds per job
TINY = ["dataset=synthetic", "dataset.videos=2", "dataset.duration_s=20", "system.fps=1", "system.s2.max_frames=6"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _backend(url: str, **overrides):
    node = {"name": "openai", "model": "test-model", "base_url": url, "api_key_env": KEY_ENV, **overrides}
    node["retry"] = {**FAST_RETRY, **node.get("retry", {})}
    return BACKENDS.build(BACKENDS.parse(node))


def _ask(backend, *requests: Request):
    async def run():
        try:
            return [await backend.generate(r) for r in requests]
        finally:
            await backend.aclose()

    return asyncio.run(run())


def _request(prompt: str = "Which shape is on screen?", frames: int = 2) -> Request:
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, :32, 0] = 200
    return Request(3.0, "S1", tuple(Frame(i, 1.0 + i, pixels) for i in range(frames)), prompt, max_new_tokens=8)


def _job(data_root: Path, server_url: str, *overrides: str):
    return compose_job(
        data_root,
        *TINY,
        "backend=openai",
        "backend.model=test-model",
        f"backend.base_url={server_url}",
        "backend.image_max_side=64",
        "backend.retry.base_s=0.001",
        "backend.retry.cap_s=0.01",
        "backend.price.model=test-model",
        *overrides,
    )


def _answer(body: dict) -> str:
    """A deterministic answer that depends on the whole request, images included."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:6]
    return f"no A. {len(image_urls(body))} frames {digest}"  # "no": proactive triggers never fire


def _files_with(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# ---- retries, Retry-After, typed errors


def test_a_429_with_retry_after_is_waited_out_then_answered(openai_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    openai_server.script = [Reply("slow down", status=429, error_type="rate_limit_error", retry_after="0.3")]
    backend = _backend(openai_server.url)
    started = time.monotonic()
    [response] = _ask(backend, _request())
    assert time.monotonic() - started >= 0.3  # Retry-After is a floor on the wait, whatever the jitter says
    assert response.text == "ok" and not response.cached
    assert len(openai_server.received) == 2 and backend.retries == {"rate_limit": 1}
    assert backend._limiter.scale == 0.5 and backend._limiter.concurrency == 4  # lowered on the 429


def test_server_errors_are_retried_within_their_limit(openai_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    openai_server.script = [Reply("down", status=500), Reply("bad gateway", status=502)]
    [response] = _ask(_backend(openai_server.url, retry={"server_tries": 3}), _request())
    assert response.text == "ok" and len(openai_server.received) == 3

    openai_server.received.clear()
    openai_server.script = [Reply("down", status=503)] * 3
    with pytest.raises(ServerError, match=r"HTTP 503.*gave up after 2 tries; backend.retry.server_tries=2"):
        _ask(_backend(openai_server.url, retry={"server_tries": 2}), _request())
    assert len(openai_server.received) == 2


def test_a_timeout_is_retried_then_an_api_timeout_error(openai_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    late = Reply("too late", delay_s=0.6)
    openai_server.script = [late]
    [response] = _ask(_backend(openai_server.url, timeout_s=0.2), _request())
    assert response.text == "ok" and len(openai_server.received) == 2

    openai_server.received.clear()
    openai_server.script = [late, late]
    with pytest.raises(ApiTimeoutError, match=r"no reply .* within 0.2 s.*timeout_tries=2"):
        _ask(_backend(openai_server.url, timeout_s=0.2, retry={"timeout_tries": 2}), _request())
    assert len(openai_server.received) == 2


@pytest.mark.parametrize("raw", ['{"id": "x", "choices": [', "{}", "<html>bad gateway</html>"])
def test_a_malformed_reply_is_retried_as_a_server_error(openai_server, monkeypatch, raw):
    monkeypatch.setenv(KEY_ENV, KEY)
    openai_server.script = [Reply("", raw=raw)]
    [response] = _ask(_backend(openai_server.url), _request())
    assert response.text == "ok" and len(openai_server.received) == 2

    openai_server.received.clear()
    openai_server.script = [Reply("", raw=raw)] * 2
    with pytest.raises(ServerError, match="malformed|without choices"):
        _ask(_backend(openai_server.url, retry={"server_tries": 2}), _request())
    assert len(openai_server.received) == 2


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (Reply("bad image", status=400, error_type="invalid_request_error"), "HTTP 400"),
        (Reply("wrong key", status=401, error_type="authentication_error"), "HTTP 401"),
        (Reply("pay up", status=429, error_type="insufficient_quota"), "HTTP 429"),  # billing: waiting never helps
    ],
)
def test_client_errors_are_never_retried(openai_server, monkeypatch, reply, why):
    monkeypatch.setenv(KEY_ENV, KEY)
    openai_server.reply = lambda body: reply
    with pytest.raises(ClientError, match=f"{why}.*not retried"):
        _ask(_backend(openai_server.url), _request())
    assert len(openai_server.received) == 1


def test_a_retry_after_beyond_the_limit_ends_the_retries_without_waiting(openai_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    openai_server.reply = lambda body: Reply("come back tomorrow", status=429, retry_after="86400")
    started = time.monotonic()
    with pytest.raises(RateLimitError, match=r"asked to wait 86400 s, more than backend.retry.max_retry_after_s=5"):
        _ask(_backend(openai_server.url, retry={"max_retry_after_s": 5}), _request())
    assert time.monotonic() - started < 5 and len(openai_server.received) == 1


def test_the_key_is_in_no_error_and_no_log_line(openai_server, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    openai_server.reply = lambda body: Reply(f"key {KEY} is rate limited", status=429, retry_after="0.01")
    with caplog.at_level(logging.DEBUG), pytest.raises(RateLimitError) as raised:
        _ask(_backend(openai_server.url, retry={"rate_limit_tries": 3}), _request())
    assert "[key]" in str(raised.value) and KEY not in str(raised.value)
    assert "retrying" in caplog.text and KEY not in caplog.text
    assert [r.authorization for r in openai_server.received] == [f"Bearer {KEY}"] * 3


def test_too_many_frames_for_the_model_is_a_client_error_before_any_call(openai_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = _backend(openai_server.url, capabilities={"max_images": 1})
    with pytest.raises(ClientError, match=r"2 frames; model test-model accepts at most 1 .*system.s1.max_frames to 1"):
        _ask(backend, _request(frames=2))
    assert openai_server.received == []


def test_a_model_without_temperature_gets_none_and_images_arrive_intact(openai_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = _backend(openai_server.url, capabilities={"temperature": False}, image_format="png")
    request = _request(frames=1)
    _ask(backend, request)
    [body] = openai_server.bodies
    assert "temperature" not in body
    data = base64.b64decode(image_urls(body)[0].split(",", 1)[1])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), request.frames[0].pixels)


# ---- the response cache


def test_the_cache_keys_on_model_parameters_and_image_bytes_and_keeps_only_complete_replies(
    openai_server, monkeypatch, tmp_path
):
    monkeypatch.setenv(KEY_ENV, KEY)
    cache = ResponseCache(tmp_path / "responses.sqlite")

    def ask(request: Request, **overrides):
        backend = _backend(openai_server.url, **overrides)
        backend.attach(cache, backend._budget)
        return _ask(backend, request)[0]

    first = ask(_request())
    again = ask(_request())
    assert (first.cached, again.cached, again.text, again.tokens_in) == (False, True, first.text, first.tokens_in)
    assert len(openai_server.received) == 1
    frames = _request().frames
    other_pixels = dataclasses.replace(_request(), frames=(frames[0], Frame(1, 2.0, np.ones((48, 64, 3), np.uint8))))
    for request, overrides in [
        (_request(), {"temperature": 0.5}),
        (_request(), {"model": "other-model"}),
        (_request("Another question?"), {}),
        (other_pixels, {}),
    ]:
        assert not ask(request, **overrides).cached
    assert len(openai_server.received) == 5
    assert ask(_request(), timeout_s=33.0, retry={"server_tries": 9}).cached  # how calls are made: same key

    openai_server.reply = lambda body: Reply("[filtered]", finish_reason="content_filter")
    for _ in range(2):  # an incomplete reply is never stored
        assert not ask(_request("Filtered?")).cached
    assert len(openai_server.received) == 7
    cache.close()


def test_a_repeated_and_a_resumed_job_make_no_request_and_count_their_cached_calls(
    openai_server, monkeypatch, data_root, tmp_path
):
    monkeypatch.setenv(KEY_ENV, KEY)
    openai_server.reply = _answer
    cache_file = tmp_path / "cache" / "responses.sqlite"
    job, run, shard = _job(data_root, openai_server.url, f"backend.api_key_env={KEY_ENV}",
                           f"run.response_cache={cache_file}")  # fmt: skip
    first = run_job(job, run, shard, tmp_path / "first")
    paid = len(openai_server.received)
    records = {r.query_id: r for r in store.read_job(tmp_path / "first")}
    assert paid == first.model_calls == sum(r.n_calls for r in records.values()) > 0
    assert first.summary["cached_calls"] == 0 and not any(r.has_error for r in records.values())
    assert first.summary["cost_usd"] == pytest.approx(
        sum((r.tokens_in * 2.5 + r.tokens_out * 10.0) / 1e6 for r in records.values())
    )

    # the same job in a new folder: every call comes from the cache
    repeated = run_job(job, run, shard, tmp_path / "repeated")
    assert len(openai_server.received) == paid
    again = {r.query_id: r for r in store.read_job(tmp_path / "repeated")}
    assert {k: (r.response, r.frame_times_s, r.cost_usd) for k, r in again.items()} == {
        k: (r.response, r.frame_times_s, r.cost_usd) for k, r in records.items()
    }
    assert all(r.cached_calls == r.n_calls for r in again.values())
    assert repeated.summary["cached_calls"] == repeated.summary["model_calls"] == paid
    manifest = json.loads((tmp_path / "repeated" / "manifest.json").read_text())
    assert manifest["cached_calls"] == paid and manifest["spent_usd"] == 0 and manifest["cost_usd"] > 0
    assert f"({paid} served from the response cache)" in (tmp_path / "repeated" / "summary.md").read_text()

    # a resumed job (half of the records lost): the missing queries come from the cache too
    path = next((tmp_path / "first" / "shards").glob("*.jsonl"))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]))
    resumed = run_job(job, run, shard, tmp_path / "first")
    assert resumed.new == len(lines) - len(lines) // 2 and len(openai_server.received) == paid
    assert {r.query_id: r.response for r in store.read_job(tmp_path / "first")} == {
        k: r.response for k, r in records.items()
    }

    # the key reached the server's header and nothing on disk: job folders, config, manifest, cache and its WAL
    assert all(r.authorization == f"Bearer {KEY}" for r in openai_server.received)
    for folder in (tmp_path / "first", tmp_path / "repeated", cache_file.parent):
        assert list(folder.rglob("*")) and _files_with(folder, KEY) == []


def test_typed_errors_become_error_records_never_answers(openai_server, monkeypatch, data_root, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    openai_server.reply = lambda body: Reply(f"overloaded ({KEY})", status=503)
    job, run, shard = _job(data_root, openai_server.url, "backend.retry.server_tries=2", "scheduler=force_s1",
                           f"run.response_cache={tmp_path / 'responses.sqlite'}")  # fmt: skip
    result = run_job(job, run, shard, tmp_path / "job")
    records = store.read_job(tmp_path / "job")
    assert records and all(
        r.error.startswith("ServerError: openai backend: InternalServerError (HTTP 503") for r in records
    )
    assert all("gave up after 2 tries" in r.error and "[key]" in r.error for r in records)
    assert all(r.response is None and r.parsed is None and r.score is None for r in records)
    assert len(openai_server.received) == 2 * len(records) and result.summary["errors"] == len(records)
    assert _files_with(tmp_path, KEY) == []
    with sqlite3.connect(tmp_path / "responses.sqlite") as db:  # failures are never cached
        assert db.execute("SELECT COUNT(*) FROM responses").fetchone() == (0,)


# ---- run.estimate


def test_the_estimate_counts_what_the_job_then_asks_and_writes_nothing(openai_server, monkeypatch, data_root, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # an estimate needs no key
    job, run, shard = compose_job(data_root, *TINY, "backend=openai", f"backend.base_url={openai_server.url}",
                                  "scheduler=force_s1", "run.estimate=true")  # fmt: skip
    estimate = run_job(job, run, shard, tmp_path / "job").estimate
    assert openai_server.received == [] and not (tmp_path / "job" / "shards").exists()
    assert not (tmp_path / "job" / "manifest.json").exists() and not (tmp_path / "job" / "config.yaml").exists()
    samples = DATASETS.build(job.dataset).load()
    queries = [q for s in samples for q in s.queries]
    proactive = [q for q in queries if q.kind == "proactive"]
    assert estimate.to_ask == len(queries) and estimate.recorded == 0 and proactive
    assert estimate.answers == len(queries) and estimate.notes == 0 and estimate.polls > len(proactive)
    load = estimate.routes["S1"]
    assert load.backend == "openai gpt-4o-2024-08-06" and estimate.routes["S2"].calls == 0
    # 320x240 frames at image_max_side 768, detail auto: 85 + 170 for one tile each
    assert load.input_tokens > 255 * load.images
    assert estimate.cost_usd == pytest.approx((load.input_tokens * 2.5 + load.output_tokens * 10.0) / 1e6)
    text = estimate.text("job")
    assert f"{len(queries)} queries to ask" in text and f"cost: up to ${estimate.cost_usd:,.2f}" in text

    # the real job, where no trigger ever fires: polls reach their bound, and no proactive query answers
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    openai_server.reply = _answer
    job, run, shard = compose_job(data_root, *TINY, "backend=openai", f"backend.base_url={openai_server.url}",
                                  "scheduler=force_s1", "backend.retry.base_s=0.001")  # fmt: skip
    run_job(job, run, shard, tmp_path / "job")
    received = openai_server.received
    assert len(received) == estimate.polls + estimate.answers - len(proactive)
    shown = sum(len(image_urls(r.body)) for r in received)
    assert estimate.images - len(proactive) * job.system.s1.max_frames <= shown <= estimate.images

    # once recorded, nothing is left to ask
    job, run, shard = compose_job(data_root, *TINY, "backend=openai", f"backend.base_url={openai_server.url}",
                                  "scheduler=force_s1", "backend.retry.base_s=0.001", "run.estimate=true")  # fmt: skip
    again = run_job(job, run, shard, tmp_path / "job").estimate
    assert (again.to_ask, again.recorded, again.calls, again.cost_usd) == (0, len(queries), 0, 0.0)


def test_an_estimate_with_a_model_that_has_no_price_says_so(data_root, tmp_path):
    job, run, shard = compose_job(
        data_root, *TINY, "backend=openai", "backend.model=unpriced-model", "run.estimate=true"
    )
    estimate = run_job(job, run, shard, tmp_path / "job").estimate
    assert estimate.cost_usd is None and "cost: unknown" in estimate.text("job")


@pytest.mark.slow
def test_run_sweep_prints_the_estimate_and_stops(data_root, tmp_path):
    env_key = {"OPENAI_API_KEY": ""}  # an estimate needs no key
    args = ["-m", "backend=openai", "run.estimate=true", f"dataset.root={data_root}"]  # a sweep of one job
    done = run_sweep(*args, *TINY[1:], "run.progress=false", cwd=tmp_path, env=env_key)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("estimate for backend=openai,") == 1 and done.stdout.count("cost: up to $") == 1
    sweep = tmp_path / "outputs" / "default"
    assert not (sweep / ".jobs").exists() and not (sweep / "sweep.json").exists()  # no ledger: a real sweep's stays
    written = [p.name for job in sweep.iterdir() if job.is_dir() for p in job.iterdir()]
    assert written and set(written) <= {".hydra", "run_sweep.log"}  # Hydra's own files; no record, manifest, status


# ---- run.budget_usd


def test_a_budget_stops_the_job_cleanly_and_a_larger_one_continues_exactly(
    openai_server, monkeypatch, data_root, tmp_path
):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    openai_server.reply = _answer
    common = ["run.concurrency=3", f"run.response_cache={tmp_path / 'responses.sqlite'}"]
    full_job = _job(data_root, openai_server.url, *common[:1])
    run_job(*full_job, tmp_path / "unbudgeted")  # the reference: no budget, no cache
    reference = {r.query_id: r for r in store.read_job(tmp_path / "unbudgeted")}
    openai_server.received.clear()

    budget = 0.03
    job, run, shard = _job(data_root, openai_server.url, *common, f"run.budget_usd={budget}")
    stopped = run_job(job, run, shard, tmp_path / "job")
    partial = store.read_job(tmp_path / "job")
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert stopped.budget_reached and 0 < len(partial) < len(reference)
    assert not any(r.has_error for r in partial)  # the queries not asked have no record at all
    assert list((tmp_path / "job" / "shards").glob("*.done")) == []
    note = manifest["budget_reached"]
    assert note["budget_usd"] == budget and note["unasked"] == len(reference) - len(partial)
    assert 0 < manifest["spent_usd_total"] == note["spent_usd_total"] <= budget  # a call starts only if it fits

    job, run, shard = _job(data_root, openai_server.url, *common, "run.budget_usd=100")
    finished = run_job(job, run, shard, tmp_path / "job")
    records = store.read_job(tmp_path / "job")
    assert not finished.budget_reached and sorted(r.query_id for r in records) == sorted(reference)
    assert {r.query_id: (r.response, r.frame_times_s) for r in records} == {
        k: (r.response, r.frame_times_s) for k, r in reference.items()
    }
    after = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert after["budget_reached"] is None and len(list((tmp_path / "job" / "shards").glob("*.done"))) == 4
    assert after["spent_usd_total"] == pytest.approx(manifest["spent_usd_total"] + after["spent_usd"])


def test_a_budget_with_an_unpriced_model_fails_before_any_call(openai_server, monkeypatch, data_root, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    job, run, shard = compose_job(data_root, *TINY, "backend=openai", "backend.model=unpriced-model",
                                  f"backend.base_url={openai_server.url}", "run.budget_usd=1")  # fmt: skip
    with pytest.raises(ConfigError, match="no price for model 'unpriced-model'"):
        run_job(job, run, shard, tmp_path / "job")
    assert openai_server.received == [] and store.read_job(tmp_path / "job") == []


@dataclass(frozen=True)
class RefusingConfig:
    name: str = "refusing_echo"


@BACKENDS.register("refusing_echo", RefusingConfig)
class RefusingEcho:
    """Answers from everything it is shown (notes included); refuses every call after `allowed`, like a spent
    budget. `allowed` None: never refuses."""

    allowed: int | None = None
    calls = 0

    def __init__(self, cfg: RefusingConfig) -> None:
        self.cfg = cfg

    async def generate(self, request: Request) -> Response:
        if RefusingEcho.allowed is not None and RefusingEcho.calls >= RefusingEcho.allowed:
            raise BudgetExhausted("spent")
        RefusingEcho.calls += 1
        seen = json.dumps([request.prompt, [f.time_s for f in request.frames], list(request.context)])
        return Response(f"yes A. {hashlib.sha256(seen.encode()).hexdigest()[:8]}")

    async def aclose(self) -> None:
        pass


def test_a_refused_call_stops_its_stream_without_records_and_a_rerun_continues_exactly(data_root, tmp_path):
    """Text-memory notes included: a refused note stops the stream too (a lost note would change later answers).
    With 3 calls allowed, one stream is stopped at an answer and the other at a note."""
    job, run, shard = compose_job(data_root, *TINY, "memory=text", "memory.clip_s=4", "run.concurrency=1")
    job = dataclasses.replace(job, backend=Choice("backend", "refusing_echo", RefusingConfig()))
    RefusingEcho.allowed, RefusingEcho.calls = None, 0
    run_job(job, run, shard, tmp_path / "reference")
    reference = {r.query_id: r.response for r in store.read_job(tmp_path / "reference")}

    RefusingEcho.allowed, RefusingEcho.calls = 3, 0
    run_job(job, run, shard, tmp_path / "job")
    partial = store.read_job(tmp_path / "job")
    assert len(partial) < len(reference) and not any(r.has_error for r in partial)
    assert {r.query_id: r.response for r in partial}.items() <= reference.items()
    RefusingEcho.allowed = None
    run_job(job, run, shard, tmp_path / "job")
    assert {r.query_id: r.response for r in store.read_job(tmp_path / "job")} == reference
