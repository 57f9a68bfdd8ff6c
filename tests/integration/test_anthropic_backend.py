"""The anthropic backend through the official SDK against a local Messages API server: what goes on the wire,
what comes back, retries and typed errors, the key kept secret, and a synthetic job served from the cache."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from backends.base import BACKENDS
from harness.errors import ApiTimeoutError, ClientError, ConfigError, RateLimitError, ServerError
from harness.records import Frame, Request, Turn
from harness.runner import store
from harness.runner.job import run_job
from tests.fixtures.anthropic_server import Reply, decode_image, image_blocks
from tests.helpers import compose_job

KEY_ENV = "HARNESS_TEST_ANTHROPIC_KEY"
KEY = "sk-ant-test-8d1f4b2a9c6e"
FAST_RETRY = {"base_s": 0.001, "cap_s": 0.01}  # every backoff sleep stays tiny
ONE_VIDEO = ("dataset=synthetic", "dataset.videos=1", "dataset.duration_s=30")  # 11 queries, a follow-up among them


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _backend(url: str, **overrides):
    node = {"name": "anthropic", "model": "claude-test", "base_url": url, "api_key_env": KEY_ENV, **overrides}
    node["retry"] = {**FAST_RETRY, **node.get("retry", {})}
    return BACKENDS.build(BACKENDS.parse(node))


async def _generate(backend, *requests: Request):
    try:
        return [await backend.generate(r) for r in requests]
    finally:
        await backend.aclose()


def _frame(index: int, time_s: float, width: int, height: int, noise: bool = False) -> Frame:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)  # a gradient, so the codec has work to do
    pixels[: height // 2, :, 1] = 200
    if noise:  # incompressible: a JPEG of it is large
        pixels[:] = np.random.default_rng(index).integers(0, 256, pixels.shape, dtype=np.uint8)
    return Frame(index, time_s, pixels)


REQUEST = Request(
    time_s=12.5,
    route="S2",
    frames=(_frame(3, 1.5, 400, 200), _frame(4, 2.0, 80, 60), _frame(5, 12.25, 60, 120)),
    prompt="What shape is the red object on screen now?",
    history=(Turn("Which colour appeared first?", "A. red"), Turn("And then?", "")),
    context=("[0.5 s] A red circle.", "[1.0 s] A blue star."),
    max_new_tokens=17,
    system="You watch a live video.",
)


def test_the_request_is_system_history_context_timed_frames_then_prompt(anthropic_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = _backend(anthropic_server.url, image_max_side=100, thinking="adaptive", effort="low", thinking_tokens=8)
    asyncio.run(_generate(backend, REQUEST))

    [received] = anthropic_server.received
    assert (received.method, received.path) == ("POST", "/v1/messages")
    assert received.headers["authorization"] == f"Bearer {KEY}"  # this SDK version sends the key as a Bearer token
    assert received.headers["anthropic-version"] and "x-api-key" not in received.headers
    assert received.headers["x-stainless-retry-count"] == "0"
    body = received.body
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "<image>"}}
    assert {k: v for k, v in body.items() if k != "messages"} == {
        "model": "claude-test",
        "max_tokens": 17 + 8,  # room for a short thought before the answer
        "system": "You watch a live video.",
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "low"},
    }  # no temperature: the default capabilities say Claude refuses one
    assert _without_images(body["messages"]) == [
        {"role": "user", "content": "Which colour appeared first?"},
        {"role": "assistant", "content": "A. red"},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "(no answer)"},  # the API refuses an empty text block
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "[0.5 s] A red circle.\n[1.0 s] A blue star."},
                {"type": "text", "text": "[1.5 s]"},
                image,
                {"type": "text", "text": "[2.0 s]"},
                image,
                {"type": "text", "text": "[12.2 s]"},
                image,
                {"type": "text", "text": "What shape is the red object on screen now?"},
            ],
        },
    ]
    decoded = [decode_image(block) for block in image_blocks(body)]
    assert [i.format for i in decoded] == ["JPEG"] * 3
    assert [i.size for i in decoded] == [(100, 50), (80, 60), (50, 100)]  # longer side <= 100, never enlarged
    original = REQUEST.frames[1].pixels.astype(int)  # the frame sent at its own size: the same picture
    assert np.abs(np.asarray(decoded[1].convert("RGB")).astype(int) - original).mean() < 4


def _without_images(messages: list[dict]) -> list[dict]:
    def block(b: dict) -> dict:
        return {**b, "source": {**b["source"], "data": "<image>"}} if b["type"] == "image" else b

    return [
        {**m, "content": [block(b) for b in m["content"]]} if isinstance(m["content"], list) else m for m in messages
    ]


def test_a_prompt_alone_goes_as_a_string_with_the_temperature_the_model_accepts(anthropic_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = _backend(anthropic_server.url, temperature=0.3, capabilities={"temperature": True})
    asyncio.run(_generate(backend, Request(0.0, "S2", (), "Rate this answer.")))
    assert anthropic_server.received[0].body == {
        "model": "claude-test",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "Rate this answer."}],
        "temperature": 0.3,
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("refusal", "content_filter")],
)
def test_usage_cost_and_finish_reason_come_from_the_reply(anthropic_server, monkeypatch, stop_reason, finish):
    monkeypatch.setenv(KEY_ENV, KEY)
    anthropic_server.reply = lambda body: Reply("B. blue", stop_reason, 1234, 7, thinking="The star came second.")
    price = {"model": "claude-test", "input_per_mtok": 2.0, "output_per_mtok": 10.0}
    backend = _backend(anthropic_server.url, price=price)
    [response] = asyncio.run(_generate(backend, Request(3.0, "S1", (_frame(0, 1.0, 32, 24),), "Q")))
    assert (response.text, response.tokens_in, response.tokens_out) == ("B. blue", 1234, 7)  # no thinking text
    assert response.finish_reason == finish and not response.cached
    assert response.cost_usd == pytest.approx((1234 * 2.0 + 7 * 10.0) / 1e6)
    assert 0 < response.latency_s < 10


@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_key_fails_when_the_backend_is_built_naming_the_variable(anthropic_server, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-the-sdk-default")  # not read: the config names the variable
    with pytest.raises(ConfigError, match=KEY_ENV):
        _backend(anthropic_server.url)
    assert anthropic_server.received == []


def test_no_base_url_means_the_anthropic_api_whatever_the_environment_says(anthropic_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic_server.url)  # the SDK's own fallback: not read
    backend = _backend(None)
    assert str(backend._client.base_url) == "https://api.anthropic.com"
    asyncio.run(backend.aclose())
    assert anthropic_server.received == []


def test_a_429_with_retry_after_is_waited_out_and_retried_once(anthropic_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    anthropic_server.script(Reply("slow down", status=429, error_type="rate_limit_error", retry_after="0.05"))
    backend = _backend(anthropic_server.url)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    backend._sleep = sleep
    [response] = asyncio.run(_generate(backend, Request(0.0, "S2", (), "Q")))
    assert response.text == "ok" and len(anthropic_server.received) == 2
    assert [r.status for r in anthropic_server.received] == [429, 200]
    assert len(waits) == 1 and waits[0] >= 0.05  # Retry-After is a floor on the wait
    assert backend.retries["rate_limit"] == 1


@pytest.mark.parametrize(
    ("reply", "error", "tries"),
    [
        (Reply("boom", status=500), ServerError, 3),
        (Reply("overloaded", status=529, error_type="overloaded_error"), ServerError, 3),
        (Reply(malformed=True), ServerError, 3),
        (Reply("busy", status=429, error_type="rate_limit_error", retry_after="0"), RateLimitError, 2),
    ],
)
def test_failures_past_the_tries_become_typed_errors(anthropic_server, monkeypatch, reply, error, tries):
    monkeypatch.setenv(KEY_ENV, KEY)
    anthropic_server.reply = lambda body: reply
    backend = _backend(anthropic_server.url, retry={"server_tries": 3, "rate_limit_tries": 2})
    with pytest.raises(error) as raised:
        asyncio.run(_generate(backend, Request(0.0, "S2", (), "Q")))
    assert len(anthropic_server.received) == tries
    assert f"gave up after {tries} tries" in str(raised.value)


def test_a_slow_server_is_a_timeout_on_every_try(anthropic_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    anthropic_server.reply = lambda body: Reply(delay_s=5.0)  # released when the server stops
    backend = _backend(anthropic_server.url, timeout_s=0.2, retry={"timeout_tries": 2})
    with pytest.raises(ApiTimeoutError, match="no reply"):
        asyncio.run(_generate(backend, Request(0.0, "S2", (), "Q")))
    assert len(anthropic_server.received) == 2


def test_a_refused_request_is_one_call_and_a_client_error_without_the_key(anthropic_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    # a server that echoes the credentials it got: the message must still not carry them
    anthropic_server.reply = lambda body: Reply(
        f"bad request for key {KEY}", status=400, error_type="invalid_request_error"
    )
    with pytest.raises(ClientError) as raised:
        asyncio.run(_generate(_backend(anthropic_server.url), Request(0.0, "S2", (), "Q")))
    message = str(raised.value)
    assert "HTTP 400" in message and "invalid_request_error" in message and "bad request for key" in message
    assert KEY not in message and raised.value.__cause__ is None
    assert len(anthropic_server.received) == 1


def test_more_frames_than_the_model_takes_fail_before_any_call_naming_the_setting(anthropic_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    frames = tuple(_frame(i, i * 0.5, 32, 24) for i in range(4))
    backend = _backend(anthropic_server.url, capabilities={"max_images": 3})
    with pytest.raises(ClientError, match=r"4 frames.*at most 3.*system\.s2\.max_frames"):
        asyncio.run(_generate(backend, Request(2.0, "S2", frames, "Q")))
    assert anthropic_server.received == []


def test_a_frame_over_the_byte_limit_is_shrunk_until_it_fits(anthropic_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    limit = 20_000  # bytes of base64; a 200 x 150 noise frame is about 60 kB of it at full size
    backend = _backend(anthropic_server.url, capabilities={"max_image_bytes": limit})
    asyncio.run(_generate(backend, Request(1.0, "S2", (_frame(0, 0.5, 200, 150, noise=True),), "Q")))
    [block] = image_blocks(anthropic_server.received[0].body)
    width, height = decode_image(block).size
    assert len(block["source"]["data"]) <= limit and width < 200 and width / height == pytest.approx(4 / 3, 0.05)


def test_estimated_tokens_follow_the_sent_image_sizes(monkeypatch):
    cfg = BACKENDS.parse({"name": "anthropic", "model": "claude-test", "api_key_env": KEY_ENV, "image_max_side": 100})
    backend = BACKENDS.implementation("anthropic").offline(cfg.config)  # no key needed to estimate
    texts = [REQUEST.system, REQUEST.prompt, *REQUEST.context, "[1.5 s]", "[2.0 s]", "[12.2 s]"]
    texts += ["Which colour appeared first?", "A. red", "And then?"]
    images = [(100, 50), (80, 60), (50, 100)]  # as sent: longer side 100
    expected = sum(math.ceil(len(t) / 4) for t in texts) + sum(math.ceil(w * h / 750) for w, h in images)
    assert backend.estimate_tokens(REQUEST) == expected == 67
    assert backend.payload(REQUEST)["messages"][-1]["content"][-1]["text"] == REQUEST.prompt


def test_a_job_records_the_servers_answers_and_a_rerun_asks_nothing(anthropic_server, monkeypatch, data_root, tmp_path):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    anthropic_server.reply = lambda body: f"yes A. {len(image_blocks(body))} frames"  # "yes" fires proactive triggers
    overrides = (
        *ONE_VIDEO,
        "backend=anthropic",
        "backend.model=claude-test",
        f"backend.base_url={anthropic_server.url}",
        "backend.image_max_side=64",
        "backend.retry.base_s=0.001",
        f"run.response_cache={tmp_path / 'responses.sqlite'}",
        "system.s1.max_frames=3",
        "system.s2.max_frames=5",
    )
    job, run, shard = compose_job(data_root, *overrides)
    first = run_job(job, run, shard, tmp_path / "first")
    records = store.read_job(tmp_path / "first")
    asked = len(anthropic_server.received)
    assert records and not [r.error for r in records if r.has_error]
    assert first.model_calls == asked == sum(r.n_calls for r in records) > 0
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in anthropic_server.received)
    for record in records:
        assert record.response == f"yes A. {len(record.frame_times_s)} frames"
    usage = [r.answer["usage"] for r in anthropic_server.received]
    assert sum(r.tokens_in for r in records) == sum(u["input_tokens"] for u in usage)
    assert sum(r.tokens_out for r in records) == sum(u["output_tokens"] for u in usage)

    job, run, shard = compose_job(data_root, *overrides)
    run_job(job, run, shard, tmp_path / "again")  # a new folder, the same cache: every answer is already paid for
    again = store.read_job(tmp_path / "again")
    assert len(anthropic_server.received) == asked  # zero requests
    assert sorted((r.query_id, r.response) for r in again) == sorted((r.query_id, r.response) for r in records)
    assert all(r.cached_calls == r.n_calls for r in again)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [p for p in written if KEY.encode() in p.read_bytes()]  # the key reached no file


def test_a_job_against_a_failing_server_writes_typed_error_records(anthropic_server, monkeypatch, data_root, tmp_path):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    anthropic_server.reply = lambda body: Reply("down for maintenance", status=503)
    job, run, shard = compose_job(
        data_root,
        *ONE_VIDEO,
        "backend=anthropic",
        "backend.model=claude-test",
        f"backend.base_url={anthropic_server.url}",
        "backend.retry.base_s=0.001",
        "backend.retry.server_tries=2",
        "run.response_cache=null",
        "system.s1.max_frames=2",
        "system.s2.max_frames=2",
    )
    run_job(job, run, shard, tmp_path / "job")
    records = store.read_job(tmp_path / "job")
    assert records and all(r.has_error and r.error.startswith("ServerError") for r in records)
    assert all("HTTP 503" in r.error and "gave up after 2 tries" in r.error for r in records)
