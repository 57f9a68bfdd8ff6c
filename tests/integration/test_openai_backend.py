"""The openai backend through the official SDK against a local chat-completions server: what goes on the wire,
what comes back, failures, the key kept secret, an LLM judge with its cache, and a synthetic job end to end."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backends.base import BACKENDS
from harness.benchmarks.base import DATASETS
from harness.budget import Budget
from harness.errors import ConfigError, RateLimitError, ServerError
from harness.judge import Judge, JudgeConfig, JudgePrompt
from harness.records import Frame, Request, Turn
from harness.response_cache import ResponseCache
from harness.runner import store
from harness.runner.job import run_job
from tests.fixtures.openai_server import Reply, image_urls
from tests.helpers import compose_job

KEY_ENV = "HARNESS_TEST_OPENAI_KEY"
KEY = "sk-test-5f0c9e1d2b7a4c3e"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _backend(url: str, **overrides):
    node = {"name": "openai", "model": "test-model", "base_url": url, "api_key_env": KEY_ENV, **overrides}
    return BACKENDS.build(BACKENDS.parse(node))


async def _generate(backend, *requests: Request):
    try:
        return [await backend.generate(r) for r in requests]
    finally:
        await backend.aclose()


def _frame(index: int, time_s: float, width: int, height: int) -> Frame:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)  # a gradient, so the codec has work to do
    pixels[: height // 2, :, 1] = 200
    return Frame(index, time_s, pixels)


def _decode(url: str) -> Image.Image:
    head, data = url.split(",", 1)
    assert head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


@pytest.mark.parametrize(("image_format", "pil_format"), [("jpeg", "JPEG"), ("png", "PNG")])
def test_the_request_body_is_system_history_context_timed_frames_then_prompt(
    openai_server, monkeypatch, image_format, pil_format
):
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = _backend(
        openai_server.url, temperature=0.3, image_format=image_format, image_max_side=100, image_detail="low"
    )
    frames = (_frame(3, 1.5, 400, 200), _frame(4, 2.0, 80, 60), _frame(5, 12.25, 60, 120))
    request = Request(
        time_s=12.5,
        route="S2",
        frames=frames,
        prompt="What shape is the red object on screen now?",
        history=(Turn("Which colour appeared first?", "A. red"), Turn("And then?", "B. blue")),
        context=("[0.5 s] A red circle.", "[1.0 s] A blue star."),
        max_new_tokens=17,
        system="You watch a live video.",
    )
    asyncio.run(_generate(backend, request))

    [received] = openai_server.received
    assert received.path == "/v1/chat/completions"
    assert received.authorization == f"Bearer {KEY}"  # the key goes in the header and nowhere else
    body = received.body
    urls = image_urls(body)
    image = {"type": "image_url", "image_url": {"url": "<image>", "detail": "low"}}
    assert {k: v for k, v in body.items() if k != "messages"} == {
        "model": "test-model",
        "max_completion_tokens": 17,
        "temperature": 0.3,
    }
    assert _without_images(body["messages"]) == [
        {"role": "system", "content": "You watch a live video."},
        {"role": "user", "content": "Which colour appeared first?"},
        {"role": "assistant", "content": "A. red"},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "B. blue"},
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
    assert all(url.startswith(f"data:image/{image_format};base64,") for url in urls)
    decoded = [_decode(url) for url in urls]
    assert [i.format for i in decoded] == [pil_format] * 3
    assert [i.size for i in decoded] == [(100, 50), (80, 60), (50, 100)]  # longer side <= 100, never enlarged
    if image_format == "png":  # lossless: the frame that needed no resize arrives pixel for pixel
        assert np.array_equal(np.asarray(decoded[1].convert("RGB")), frames[1].pixels)


def _without_images(messages: list[dict]) -> list[dict]:
    def part(p: dict) -> dict:
        return {**p, "image_url": {**p["image_url"], "url": "<image>"}} if p["type"] == "image_url" else p

    return [
        {**m, "content": [part(p) for p in m["content"]]} if isinstance(m["content"], list) else m for m in messages
    ]


def test_a_text_only_request_sends_the_prompt_as_a_plain_string(openai_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    asyncio.run(_generate(_backend(openai_server.url), Request(0.0, "S2", (), "Rate this answer.")))
    assert openai_server.bodies[0]["messages"] == [{"role": "user", "content": "Rate this answer."}]


@pytest.mark.parametrize("finish_reason", ["stop", "length", "content_filter"])
def test_usage_latency_and_finish_reason_come_from_the_reply(openai_server, monkeypatch, finish_reason):
    monkeypatch.setenv(KEY_ENV, KEY)
    openai_server.reply = lambda body: Reply("B. blue", finish_reason, prompt_tokens=1234, completion_tokens=7)
    [response] = asyncio.run(_generate(_backend(openai_server.url), Request(3.0, "S1", (_frame(0, 1.0, 32, 24),), "Q")))
    assert (response.text, response.tokens_in, response.tokens_out) == ("B. blue", 1234, 7)
    assert response.finish_reason == finish_reason
    assert 0 < response.latency_s < 10 and response.modelled_latency_s is None
    assert BACKENDS.implementation("openai").takes_audio is False


@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_key_fails_when_the_backend_is_built_naming_the_variable(openai_server, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(ConfigError, match=KEY_ENV):
        _backend(openai_server.url)
    assert openai_server.received == []


def test_no_base_url_means_the_openai_api_whatever_the_environment_says(openai_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)  # the SDK's own fallback: not read
    backend = _backend(None)
    assert str(backend._client.base_url) == "https://api.openai.com/v1/"
    asyncio.run(backend.aclose())
    assert openai_server.received == []


def test_a_job_without_the_key_stops_before_any_call(openai_server, monkeypatch, data_root, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    job, run, shard = compose_job(data_root, "backend=openai", f"backend.base_url={openai_server.url}")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        run_job(job, run, shard, tmp_path / "job")
    assert openai_server.received == []
    assert store.read_job(tmp_path / "job") == []


@pytest.mark.parametrize(
    ("status", "sdk_error", "typed"),
    [(500, "InternalServerError", ServerError), (429, "RateLimitError", RateLimitError)],
)
def test_an_http_error_is_retried_to_its_limit_then_a_typed_error_without_the_key(
    openai_server, monkeypatch, status, sdk_error, typed
):
    monkeypatch.setenv(KEY_ENV, KEY)
    # a server that echoes the credentials it got: the message must still not carry them
    openai_server.reply = lambda body: Reply(f"rejected key {KEY} for now", status=status, error_type="rate_limit")
    retry = {"server_tries": 2, "rate_limit_tries": 3, "base_s": 0.001}
    with pytest.raises(typed) as raised:
        asyncio.run(_generate(_backend(openai_server.url, retry=retry), Request(0.0, "S2", (), "Q")))
    message = str(raised.value)
    assert sdk_error in message and f"HTTP {status}" in message and "rejected key" in message and "gave up" in message
    assert KEY not in message and raised.value.__cause__ is None and raised.value.__suppress_context__
    assert len(openai_server.received) == (2 if status == 500 else 3)  # our retries, none of the SDK's


def test_an_unreachable_server_is_a_server_error_after_its_retries(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = _backend(f"http://127.0.0.1:{port}/v1", timeout_s=5.0, retry={"server_tries": 2, "base_s": 0.001})
    with pytest.raises(ServerError, match="APIConnectionError"):
        asyncio.run(_generate(backend, Request(0.0, "S2", (), "Q")))


def test_a_judge_through_the_openai_backend_is_asked_once_then_served_from_the_cache(
    openai_server, monkeypatch, tmp_path
):
    monkeypatch.setenv(KEY_ENV, KEY)
    verdict = "{'pred': 'yes', 'score': 4}"
    openai_server.reply = lambda body: verdict
    node = {
        "name": "openai",
        "model": "Meta-Llama-3-8B-Instruct",
        "base_url": openai_server.url,
        "api_key_env": KEY_ENV,
    }
    cfg = JudgeConfig(name="llm", backend=node, max_new_tokens=48)
    prompt = JudgePrompt("judgment", "Question: ...\nCorrect Answer: a cat\nPredicted Answer: a cat", "You judge.")

    def judge() -> Judge:
        return Judge(cfg, BACKENDS.build(BACKENDS.parse(cfg.backend)), ResponseCache(tmp_path / "judgments.sqlite"))

    async def twice(judge: Judge) -> list[dict[str, str | None]]:
        try:
            return [await judge.outputs([prompt]), await judge.outputs([prompt])]
        finally:
            await judge.aclose()

    first = judge()
    assert asyncio.run(twice(first)) == [{"judgment": verdict}] * 2
    assert (first.calls, first.cached) == (1, 1)
    assert openai_server.bodies == [
        {
            "model": "Meta-Llama-3-8B-Instruct",
            "messages": [{"role": "system", "content": "You judge."}, {"role": "user", "content": prompt.user}],
            "max_completion_tokens": 48,
            "temperature": 0.0,
        }
    ]
    again = judge()  # a later job: the judgment is on disk
    assert asyncio.run(twice(again)) == [{"judgment": verdict}] * 2
    assert (again.calls, again.cached) == (0, 2) and len(openai_server.received) == 1


def test_a_synthetic_job_end_to_end_through_the_server(openai_server, monkeypatch, data_root, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    openai_server.reply = lambda body: f"yes A. {len(image_urls(body))} frames"  # "yes" fires proactive triggers
    job, run, shard = compose_job(
        data_root,
        "backend=openai",
        "backend.model=test-model",
        f"backend.base_url={openai_server.url}",
        "backend.image_max_side=64",
        "system.s1.max_frames=3",
        "system.s2.max_frames=5",
    )
    out_dir = tmp_path / "job"
    result = run_job(job, run, shard, out_dir)

    records = store.read_job(out_dir)
    samples = DATASETS.build(job.dataset).load()
    benchmark = DATASETS.build(job.dataset)
    prompts = {q.id: benchmark.prompt(q) for s in samples for q in s.queries}
    assert sorted(r.query_id for r in records) == sorted(prompts)
    assert not [r.error for r in records if r.has_error]
    received = openai_server.received
    assert result.model_calls == len(received) == sum(r.n_calls for r in records)
    assert all(r.body["model"] == "test-model" and r.authorization == f"Bearer {KEY}" for r in received)
    # every answer is the server's reply to a request with that query's prompt and exactly the recorded frames
    answered = {}
    for r in received:
        content = r.body["messages"][-1]["content"]
        labels = tuple(p["text"] for p in content[:-1] if p["type"] == "text" and p["text"].startswith("["))
        answered.setdefault((content[-1]["text"], labels), r.answer["choices"][0]["message"]["content"])
        assert len(labels) == len(image_urls(r.body))
        assert all(max(_decode(url).size) <= 64 for url in image_urls(r.body))
    for record in records:
        labels = tuple(f"[{t:.1f} s]" for t in record.frame_times_s)
        assert answered[(prompts[record.query_id], labels)] == record.response
        assert record.response == f"yes A. {len(record.frame_times_s)} frames"
        limit = 3 if record.route == "S1" else 5
        assert len(record.frame_times_s) == limit or (0 < len(record.frame_times_s) < limit and record.time_s < 3)
    # a follow-up carries the earlier question and the system's own answer as a user/assistant turn
    by_id = {r.query_id: r for r in records}
    follows = {q.id: q.follows for s in samples for q in s.queries if q.follows}
    assert follows
    for query_id, earlier in follows.items():
        turn = [
            {"role": "user", "content": prompts[earlier]},
            {"role": "assistant", "content": by_id[earlier].response},
        ]
        asked = [
            r.body["messages"] for r in received if r.body["messages"][-1]["content"][-1]["text"] == prompts[query_id]
        ]
        assert turn in [messages[:-1] for messages in asked]
    # tokens: what the server reported, summed over each query's calls
    assert sum(r.tokens_in for r in records) == sum(r.answer["usage"]["prompt_tokens"] for r in received)
    assert sum(r.tokens_out for r in records) == sum(r.answer["usage"]["completion_tokens"] for r in received)
    assert {r.route for r in records} == {"S1", "S2"}
    # the key reached the server's header and no file of the job
    assert not [p for p in out_dir.rglob("*") if p.is_file() and KEY in p.read_text(errors="replace")]


def test_asked_for_confidence_the_request_sets_logprobs_and_the_reply_carries_their_mean_probability(
    openai_server, monkeypatch, tmp_path
):
    monkeypatch.setenv(KEY_ENV, KEY)
    openai_server.reply = lambda body: Reply("B. blue circle", token_logprobs=(-0.2, -0.4, -0.6))
    backend = _backend(openai_server.url)
    backend.attach(ResponseCache(tmp_path / "responses.sqlite"), Budget(None))
    request = Request(3.0, "S1", (_frame(0, 1.0, 32, 24),), "What shape is the blue object on screen now?")
    asked = replace(request, want_confidence=True)
    plain, first, again = asyncio.run(_generate(backend, request, asked, asked))

    assert "logprobs" not in openai_server.bodies[0] and openai_server.bodies[1]["logprobs"] is True
    assert plain.confidence is None and plain.text == first.text == "B. blue circle"
    assert first.confidence == pytest.approx(math.exp(-0.4)) and not first.cached
    assert again.cached and again.confidence == first.confidence  # the cache keeps it
    assert len(openai_server.received) == 2 and BACKENDS.implementation("openai").gives_confidence


def test_a_server_that_returns_no_logprobs_leaves_the_confidence_unset(openai_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    openai_server.logprobs = False
    openai_server.reply = lambda body: "A. red"
    [response] = asyncio.run(_generate(_backend(openai_server.url), Request(0.0, "S1", (), "Q", want_confidence=True)))
    assert openai_server.bodies[0]["logprobs"] is True
    assert response.text == "A. red" and response.confidence is None
