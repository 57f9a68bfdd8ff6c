"""Batch mode (`backend.batch=true`) through the real SDKs against local servers that speak each provider's batch
API: requests waiting at once go in one batch, the batch id is on disk before the first poll, a run that stops
while a batch is in progress leaves its queries unrecorded and the next run re-attaches instead of submitting
again, and a request that failed inside a batch is submitted again alone. Everything stays on 127.0.0.1; poll
intervals are tiny and every wait is bounded by batch_timeout_s."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backends.base import BACKENDS
from harness.budget import Budget
from harness.errors import ServerError
from harness.records import Frame, Request
from harness.response_cache import ResponseCache, request_key
from harness.runner import store
from harness.runner.job import run_job
from tests.fixtures.anthropic_server import Reply as AnthropicReply
from tests.fixtures.openai_server import Reply as OpenAIReply
from tests.helpers import compose_job

KEY_ENV = "HARNESS_TEST_API_KEY"
KEY = "sk-test-b4tch-5e3c7a91d2f0"
TINY = ["dataset=synthetic", "dataset.videos=2", "dataset.duration_s=20", "system.fps=0.5", "system.s2.max_frames=4",
        "system.proactive.poll_s=4"]  # fmt: skip
FAST = {"batch": True, "batch_idle_s": 0.02, "batch_poll_s": 0.01, "batch_timeout_s": 5.0}
PRICE = {"model": "test-model", "input_per_mtok": 2.0, "output_per_mtok": 8.0, "batch_discount": 0.5}


@dataclass(frozen=True)
class Provider:
    name: str
    fixture: str
    url: Callable[[Any], str]
    direct_calls: Callable[[Any], int]  # requests to the provider's one-call endpoint
    failing: Callable[[], Any]  # a server error reply, for the server's script
    script: Callable[[Any, list[Any]], None]


PROVIDERS = {
    "openai": Provider(
        "openai",
        "openai_server",
        lambda s: s.url,
        lambda s: s.count("POST", "/v1/chat/completions"),
        lambda: OpenAIReply("overloaded", status=500),
        lambda s, replies: s.script.extend(replies),
    ),
    "anthropic": Provider(
        "anthropic",
        "anthropic_server",
        lambda s: s.url,
        lambda s: len([r for r in s.received if r.path == "/v1/messages"]),
        lambda: AnthropicReply("overloaded", status=529, error_type="overloaded_error"),
        lambda s, replies: s.script(*replies),
    ),
    "google": Provider(
        "google",
        "google_server",
        lambda s: s.url,
        lambda s: len([r for r in s.received if r.path.endswith(":generateContent")]),
        lambda: AnthropicReply("unavailable", status=503),
        lambda s, replies: s.script(*replies),
    ),
}


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request, monkeypatch) -> tuple[Provider, Any]:
    monkeypatch.setenv(KEY_ENV, KEY)
    spec = PROVIDERS[request.param]
    return spec, request.getfixturevalue(spec.fixture)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _answer(body: dict) -> str:
    """A deterministic answer that depends on the whole request ("no": proactive triggers never fire)."""
    return f"no A. {hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]}"


def _backend(spec: Provider, server: Any, tmp_path: Path, **overrides):
    node = {"name": spec.name, "model": "test-model", "base_url": spec.url(server), "api_key_env": KEY_ENV,
            "price": PRICE, "retry": {"base_s": 0.001, "cap_s": 0.01}, **FAST, **overrides}  # fmt: skip
    backend = BACKENDS.build(BACKENDS.parse(node))
    cache = ResponseCache(tmp_path / "responses.sqlite")
    backend.attach(cache, Budget(None), tmp_path / "job")
    return backend, cache


def _request(prompt: str) -> Request:
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:, :24, 1] = 180
    return Request(2.0, "S1", (Frame(0, 1.0, pixels),), prompt, max_new_tokens=8)


def _gather(backend, *requests: Request, close: bool = True) -> list:
    async def run():
        try:
            return await asyncio.gather(*(backend.generate(r) for r in requests), return_exceptions=True)
        finally:
            if close:
                await backend.aclose()

    return asyncio.run(run())


def _ledger(folder: Path) -> dict[str, dict]:
    """The job's batch ledger by the fake server's batch ids (Gemini's ids are "batches/<id>")."""
    return {k.rsplit("/", 1)[-1]: v for k, v in json.loads((folder / "batches.json").read_text()).items()}


def _job(spec: Provider, server: Any, data_root: Path, tmp_path: Path, *overrides: str):
    fast = [f"backend.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in FAST.items()]
    return compose_job(
        data_root, *TINY, f"backend={spec.name}", "backend.model=test-model", f"backend.base_url={spec.url(server)}",
        f"backend.api_key_env={KEY_ENV}", "backend.retry.base_s=0.001", "backend.retry.cap_s=0.01",
        *(f"backend.price.{k}={v}" for k, v in PRICE.items()), f"run.response_cache={tmp_path / 'responses.sqlite'}",
        "run.concurrency=2", *fast, *overrides,
    )  # fmt: skip


def _files_with(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# ---- one batch, the ledger before the first poll, the cache afterwards


def test_requests_waiting_at_once_go_in_one_batch_whose_id_is_on_disk_before_the_first_poll(provider, tmp_path):
    spec, server = provider
    server.reply = _answer
    server.batches.in_progress_polls = 2
    seen: list[dict] = []
    server.batches.on_poll = lambda batch_id: seen.append(_ledger(tmp_path / "job"))
    backend, cache = _backend(spec, server, tmp_path)
    prompts = ["What is red?", "What is green?", "What is blue?"]
    responses = _gather(backend, *map(_request, prompts))

    [batch] = server.batches.batches.values()
    assert len(batch.requests) == 3 and spec.direct_calls(server) == 0
    assert [r.text for r in responses] == [_answer(batch.requests[k]) for k in _keys(backend, prompts)]
    assert not any(r.cached for r in responses)
    first = seen[0][batch.id]  # what the ledger held when the server was first asked for the batch's state
    assert first["state"] == "submitted" and sorted(first["keys"]) == sorted(batch.requests)
    assert server.batches.polls[batch.id] >= 3 and _ledger(tmp_path / "job")[batch.id]["state"] == "collected"
    price = PRICE["input_per_mtok"], PRICE["output_per_mtok"]
    assert [r.cost_usd for r in responses] == pytest.approx(
        [(r.tokens_in * price[0] + r.tokens_out * price[1]) * 0.5 / 1e6 for r in responses]
    )

    again, cache2 = _backend(spec, server, tmp_path)  # the same requests: from the cache, at the batch price
    cached = _gather(again, *map(_request, prompts))
    assert [r.text for r in cached] == [r.text for r in responses] and all(r.cached for r in cached)
    assert [r.cost_usd for r in cached] == pytest.approx([r.cost_usd for r in responses])
    assert len(server.batches.batches) == 1 and spec.direct_calls(server) == 0
    cache.close(), cache2.close()
    assert _files_with(tmp_path, KEY) == []


def _keys(backend, prompts: list[str]) -> list[str]:
    """The cache keys (the batch custom ids) of these prompts' requests."""
    where = {"provider": backend.provider, "base_url": backend.cfg.base_url}
    return [request_key({**where, "payload": backend.payload(_request(p))}) for p in prompts]


# ---- failures inside a batch


def test_a_request_that_failed_in_its_batch_is_submitted_again_alone(provider, tmp_path):
    spec, server = provider
    server.reply = _answer
    spec.script(server, [spec.failing()])  # the first request answered in the first batch fails
    backend, cache = _backend(spec, server, tmp_path)
    responses = _gather(backend, _request("One?"), _request("Two?"))
    first, second = server.batches.batches.values()
    failed = next(iter(first.requests))
    assert list(second.requests) == [failed] and all(isinstance(r.text, str) for r in responses)
    assert backend.retries == {"server": 1} and spec.direct_calls(server) == 0

    spec.script(server, [spec.failing()] * 2)  # out of tries: a typed error, never an answer
    backend, cache2 = _backend(spec, server, tmp_path, retry={"server_tries": 2, "base_s": 0.001})
    [error] = _gather(backend, _request("Three?"))
    assert isinstance(error, ServerError) and "gave up after 2 tries" in str(error)
    assert len(server.batches.batches) == 4
    cache.close(), cache2.close()


# ---- a run that dies while waiting, and the run after it


def test_a_new_instance_re_attaches_to_a_batch_submitted_before_a_crash(provider, tmp_path):
    spec, server = provider
    server.reply = _answer
    server.batches.in_progress_polls = 10**6  # never ends while the first process waits
    backend, cache = _backend(spec, server, tmp_path)

    async def crash():  # the process dies while polling: its tasks are cancelled mid-wait
        task = asyncio.ensure_future(backend.generate(_request("Still there?")))
        for _ in range(200):  # bounded: the batch is polled within a second
            await asyncio.sleep(0.01)
            if server.batches.polls:
                break
        task.cancel()
        await backend.aclose()

    asyncio.run(crash())
    [batch_id] = server.batches.batches
    assert _ledger(tmp_path / "job")[batch_id]["state"] == "submitted"

    server.batches.in_progress_polls = 0
    polls = server.batches.polls[batch_id]
    again, cache2 = _backend(spec, server, tmp_path)
    [response] = _gather(again, _request("Still there?"))
    assert response.text == _answer(server.batches.batches[batch_id].requests[_keys(again, ["Still there?"])[0]])
    assert list(server.batches.batches) == [batch_id] and server.batches.polls[batch_id] > polls  # re-attached
    assert _ledger(tmp_path / "job")[batch_id]["state"] == "collected"
    cache.close(), cache2.close()


def test_a_job_stops_cleanly_at_the_batch_timeout_and_the_next_run_collects_without_resubmitting(
    provider, data_root, tmp_path
):
    spec, server = provider
    server.reply = _answer
    direct = _job(spec, server, data_root, tmp_path, "backend.batch=false", "run.response_cache=null")
    run_job(*direct, tmp_path / "direct")
    reference = {r.query_id: r for r in store.read_job(tmp_path / "direct")}
    calls = spec.direct_calls(server)
    assert calls > 0 and not any(r.has_error for r in reference.values())

    server.batches.in_progress_polls = 10**6
    job = _job(spec, server, data_root, tmp_path, "backend.batch_timeout_s=0.3")
    stopped = run_job(*job, tmp_path / "job")
    partial = store.read_job(tmp_path / "job")
    ledger = _ledger(tmp_path / "job")
    assert stopped.batches_pending and {b.rsplit("/", 1)[-1] for b in stopped.batches_pending} == {
        b for b, entry in ledger.items() if entry["state"] == "submitted"
    }
    assert len(partial) < len(reference) and not any(r.has_error for r in partial)  # unasked: no record
    assert list((tmp_path / "job" / "shards").glob("*.done")) == []
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert manifest["batches_pending"] == list(stopped.batches_pending)
    submitted = set(server.batches.submitted())

    server.batches.in_progress_polls = 1
    finished = run_job(*_job(spec, server, data_root, tmp_path), tmp_path / "job")
    records = store.read_job(tmp_path / "job")
    assert not finished.batches_pending and spec.direct_calls(server) == calls  # every answer came by batch
    assert {r.query_id: r.response for r in records} == {k: r.response for k, r in reference.items()}
    assert all(r.cost_usd == pytest.approx(reference[r.query_id].cost_usd * 0.5) for r in records)
    everything = server.batches.submitted()
    assert len(everything) == len(set(everything))  # no request was submitted twice
    assert submitted <= set(everything)
    assert all(server.batches.polls[b.rsplit("/", 1)[-1]] >= 2 for b in stopped.batches_pending)  # re-attached
    assert {entry["state"] for entry in _ledger(tmp_path / "job").values()} == {"collected"}
    assert len(list((tmp_path / "job" / "shards").glob("*.done"))) == 4
    assert _files_with(tmp_path, KEY) == []
