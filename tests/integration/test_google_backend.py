"""The google backend through the official google-genai SDK against a local Gemini API server: inline frames and
the Files API video upload as they go on the wire, what comes back, retries and typed errors, the key kept
secret, and a synthetic job served from the cache."""

from __future__ import annotations

import asyncio
import base64
import io
import math
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from backends.base import BACKENDS
from harness.benchmarks.base import DATASETS
from harness.errors import ApiTimeoutError, ClientError, ConfigError, RateLimitError, ServerError
from harness.records import Frame, Request, Turn
from harness.runner import store
from harness.runner.job import run_job
from tests.fixtures.anthropic_server import Reply
from tests.fixtures.google_server import VIDEO_TOKENS, parts
from tests.helpers import compose_job

KEY_ENV = "HARNESS_TEST_GEMINI_KEY"
KEY = "AIza-test-3c7e9a1f5b2d"
FAST_RETRY = {"base_s": 0.001, "cap_s": 0.01}  # every backoff sleep stays tiny
ONE_VIDEO = ("dataset=synthetic", "dataset.videos=1", "dataset.duration_s=30")  # 11 queries, a follow-up among them


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _backend(url: str | None, **overrides):
    node = {"name": "google", "model": "gemini-test", "base_url": url, "api_key_env": KEY_ENV, **overrides}
    node["retry"] = {**FAST_RETRY, **node.get("retry", {})}
    return BACKENDS.build(BACKENDS.parse(node))


async def _generate(backend, *requests: Request):
    try:
        return [await backend.generate(r) for r in requests]
    finally:
        await backend.aclose()


def _frame(index: int, time_s: float, width: int, height: int) -> Frame:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)
    pixels[: height // 2, :, 1] = 200
    pixels[..., 2] = 40 * index  # each frame its own blue, to tell them apart in the video
    return Frame(index, time_s, pixels)


REQUEST = Request(
    time_s=12.5,
    route="S2",
    frames=(_frame(3, 1.5, 400, 200), _frame(4, 2.0, 400, 200), _frame(5, 12.25, 400, 200)),
    prompt="What shape is the red object on screen now?",
    history=(Turn("Which colour appeared first?", "A. red"),),
    context=("[0.5 s] A red circle.", "[1.0 s] A blue star."),
    max_new_tokens=17,
    system="You watch a live video.",
)


def _image(part: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.urlsafe_b64decode(part["inlineData"]["data"])))  # the SDK sends URL-safe


def test_inline_frames_follow_system_history_context_and_their_stream_times(google_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = _backend(google_server.url, image_max_side=100, thinking_level="minimal", thinking_tokens=8)
    asyncio.run(_generate(backend, REQUEST))

    [received] = google_server.received
    assert (received.method, received.path) == ("POST", "/v1/models/gemini-test:generateContent")
    assert received.headers["x-goog-api-key"] == KEY and KEY not in received.path  # the key only in its header
    assert received.headers["x-goog-api-client"].startswith("google-genai-sdk/")
    body = received.body
    assert body["systemInstruction"] == {"parts": [{"text": "You watch a live video."}], "role": "user"}
    assert body["generationConfig"] == {
        "maxOutputTokens": 17 + 8,  # room for a short thought before the answer
        "temperature": 0.0,
        "thinkingConfig": {"thinking_level": "MINIMAL"},
    }
    image = {"inlineData": {"data": "<image>", "mime_type": "image/jpeg"}}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][:2] == [
        {"role": "user", "parts": [{"text": "Which colour appeared first?"}]},
        {"role": "model", "parts": [{"text": "A. red"}]},
    ]
    last = body["contents"][-1]["parts"]
    assert [{"inlineData": {**p["inlineData"], "data": "<image>"}} if "inlineData" in p else p for p in last] == [
        {"text": "[0.5 s] A red circle.\n[1.0 s] A blue star."},
        {"text": "[1.5 s]"},
        image,
        {"text": "[2.0 s]"},
        image,
        {"text": "[12.2 s]"},
        image,
        {"text": "What shape is the red object on screen now?"},
    ]
    decoded = [_image(p) for p in parts(body, "inlineData")]
    assert [(i.format, i.size) for i in decoded] == [("JPEG", (100, 50))] * 3


def test_video_mode_uploads_one_mp4_of_the_frames_and_references_it(google_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    google_server.processing_polls = 1  # the file is PROCESSING once before it is ACTIVE
    backend = _backend(google_server.url, send="video", image_max_side=101, file_poll_s=0.01)
    [response] = asyncio.run(_generate(backend, REQUEST))

    steps = [(r.method, r.path.split("?")[0]) for r in google_server.received]
    assert steps == [
        ("POST", "/upload/v1/files"),  # start: the upload URL comes back in a header
        ("POST", "/upload/v1/files"),  # upload, finalize: the bytes
        ("GET", "/v1/files/video-1"),  # PROCESSING
        ("GET", "/v1/files/video-1"),  # ACTIVE
        ("POST", "/v1/models/gemini-test:generateContent"),
        ("DELETE", "/v1/files/video-1"),  # removed once answered
    ]
    start, finish = google_server.received[:2]
    video = google_server.uploads["video-1"]
    assert start.headers["x-goog-upload-protocol"] == "resumable" and start.headers["x-goog-upload-command"] == "start"
    assert start.headers["x-goog-upload-header-content-length"] == str(len(video))
    assert start.headers["x-goog-upload-header-content-type"] == "video/mp4"
    assert start.body == {"file": {"mime_type": "video/mp4", "size_bytes": len(video)}}
    assert (
        finish.headers["x-goog-upload-command"] == "upload, finalize" and finish.headers["x-goog-upload-offset"] == "0"
    )
    assert finish.raw == video
    # the key goes in a header on every request but the upload itself, whose URL is the upload session
    assert "x-goog-api-key" not in finish.headers and KEY not in finish.path
    assert all(r.headers["x-goog-api-key"] == KEY for r in google_server.received if r is not finish)

    body = google_server.received[4].body
    assert parts(body, "inlineData") == []  # the frames went as the video only
    [video_part] = parts(body, "fileData")
    assert video_part == {
        "fileData": {"file_uri": f"{google_server.url}/v1/files/video-1", "mime_type": "video/mp4"},
        "videoMetadata": {"fps": round(2 / 10.75, 3)},  # sampled at the frames' own rate
    }
    texts = [p["text"] for p in parts(body, "text")]
    assert texts[-3:] == ["[0.5 s] A red circle.\n[1.0 s] A blue star.", "[1.5 s to 12.2 s]", REQUEST.prompt]
    assert response.visual_tokens == VIDEO_TOKENS and google_server.deleted == ["video-1"]

    with av.open(io.BytesIO(video)) as container:  # the mp4 holds the frames, each at its stream time
        decoded = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert [t for t, _ in decoded] == pytest.approx([0.0, 0.5, 10.75], abs=1e-3)
    assert {p.shape for _, p in decoded} == {(50, 100, 3)}  # 101 x 50.5 made even for yuv420p
    for (_, pixels), frame in zip(decoded, REQUEST.frames, strict=True):
        sent = np.asarray(Image.fromarray(frame.pixels).resize((100, 50), Image.Resampling.BICUBIC)).astype(int)
        assert np.abs(pixels.astype(int) - sent).mean() < 6


def test_the_video_payload_is_the_same_bytes_every_time(monkeypatch):
    """The cache key hashes the payload: the same frames must encode to the same mp4."""
    cfg = BACKENDS.parse({"name": "google", "model": "gemini-test", "api_key_env": KEY_ENV, "send": "video"})
    backend = BACKENDS.implementation("google").offline(cfg.config)
    first, second = backend.payload(REQUEST), backend.payload(REQUEST)
    assert first == second and len(parts({"contents": first["contents"]}, "file_upload")) == 1


def test_a_failed_upload_is_retried_as_a_whole(google_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    google_server.upload_failures = [Reply("upload backend unavailable", status=503)]
    backend = _backend(google_server.url, send="video", file_poll_s=0.01)
    [response] = asyncio.run(_generate(backend, REQUEST))
    assert response.text == "ok" and backend.retries["server"] == 1
    assert [r.status for r in google_server.requests("/upload/v1/files")] == [503, 200, 200]
    assert len(google_server.requests(":generateContent")) == 1


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("OTHER", "other")],
)
def test_usage_visual_tokens_cost_and_finish_reason_come_from_the_reply(google_server, monkeypatch, reason, finish):
    monkeypatch.setenv(KEY_ENV, KEY)
    google_server.reply = lambda body: Reply("B. blue", reason, 1234, 7)
    price = {"model": "gemini-test", "input_per_mtok": 0.75, "output_per_mtok": 3.75}
    backend = _backend(google_server.url, price=price)
    [response] = asyncio.run(_generate(backend, Request(3.0, "S1", (_frame(0, 1.0, 32, 24),), "Q")))
    assert (response.text, response.tokens_in, response.tokens_out) == ("B. blue", 1234, 7)
    assert response.finish_reason == finish and response.visual_tokens == 100  # the server's IMAGE count
    assert response.cost_usd == pytest.approx((1234 * 0.75 + 7 * 3.75) / 1e6)


@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_key_fails_when_the_backend_is_built_naming_the_variable(google_server, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-from-the-sdk-default")  # not read: the config names the variable
    with pytest.raises(ConfigError, match=KEY_ENV):
        _backend(google_server.url)
    assert google_server.received == []


def test_no_base_url_means_the_gemini_api_whatever_the_environment_says(google_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", google_server.url)  # the SDK's own fallback: not read
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    backend = _backend(None)
    options = backend._client._api_client._http_options
    assert (options.base_url, options.api_version) == ("https://generativelanguage.googleapis.com/", "v1")
    asyncio.run(backend.aclose())
    assert google_server.received == []


def test_a_429_with_retry_after_is_waited_out_and_retried_once(google_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    google_server.script(Reply("quota", status=429, retry_after="0.05"))
    backend = _backend(google_server.url)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    backend._sleep = sleep
    [response] = asyncio.run(_generate(backend, Request(0.0, "S2", (), "Q")))
    assert response.text == "ok" and [r.status for r in google_server.received] == [429, 200]
    assert len(waits) == 1 and waits[0] >= 0.05


@pytest.mark.parametrize(
    ("reply", "error", "tries"),
    [
        (Reply("boom", status=500), ServerError, 3),
        (Reply(malformed=True), ServerError, 3),
        (Reply("quota", status=429, retry_after="0"), RateLimitError, 2),
    ],
)
def test_failures_past_the_tries_become_typed_errors(google_server, monkeypatch, reply, error, tries):
    monkeypatch.setenv(KEY_ENV, KEY)
    google_server.reply = lambda body: reply
    backend = _backend(google_server.url, retry={"server_tries": 3, "rate_limit_tries": 2})
    with pytest.raises(error, match=f"gave up after {tries} tries"):
        asyncio.run(_generate(backend, Request(0.0, "S2", (), "Q")))
    assert len(google_server.received) == tries


def test_a_slow_server_is_a_timeout_on_every_try(google_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    google_server.reply = lambda body: Reply(delay_s=5.0)  # released when the server stops
    backend = _backend(google_server.url, timeout_s=0.2, retry={"timeout_tries": 2})
    with pytest.raises(ApiTimeoutError):
        asyncio.run(_generate(backend, Request(0.0, "S2", (), "Q")))
    assert len(google_server.received) == 2


def test_a_refused_request_is_one_call_and_a_client_error_without_the_key(google_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    google_server.reply = lambda body: Reply(f"API key {KEY} not valid", status=400)
    with pytest.raises(ClientError) as raised:
        asyncio.run(_generate(_backend(google_server.url), Request(0.0, "S2", (), "Q")))
    message = str(raised.value)
    assert "HTTP 400" in message and "INVALID_ARGUMENT" in message and KEY not in message
    assert len(google_server.received) == 1


def test_estimated_tokens_count_images_or_video_frames(monkeypatch):
    texts = [REQUEST.system, REQUEST.prompt, *REQUEST.context, "Which colour appeared first?", "A. red"]
    text = sum(math.ceil(len(t) / 4) for t in texts)
    labels = sum(math.ceil(len(t) / 4) for t in ("[1.5 s]", "[2.0 s]", "[12.2 s]"))
    for send, media in (("frames", labels + 3 * 258), ("video", 3 * 263)):
        cfg = BACKENDS.parse({"name": "google", "model": "gemini-test", "api_key_env": KEY_ENV, "send": send})
        assert BACKENDS.implementation("google").offline(cfg.config).estimate_tokens(REQUEST) == text + media


def _frame_times(video: bytes) -> list[float]:
    with av.open(io.BytesIO(video)) as container:
        return [float(f.time) for f in container.decode(video=0)]


def test_a_video_job_records_the_servers_answers_and_a_rerun_asks_nothing(
    google_server, monkeypatch, data_root, tmp_path
):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    google_server.reply = lambda body: f"yes A. {len(parts(body, 'fileData'))} video"  # "yes" fires proactive triggers
    overrides = (
        *ONE_VIDEO,
        "backend=google",
        "backend.model=gemini-test",
        "backend.send=video",
        f"backend.base_url={google_server.url}",
        "backend.image_max_side=64",
        "backend.file_poll_s=0.01",
        "backend.retry.base_s=0.001",
        f"run.response_cache={tmp_path / 'responses.sqlite'}",
        "system.s1.max_frames=3",
        "system.s2.max_frames=5",
    )
    job, run, shard = compose_job(data_root, *overrides)
    first = run_job(job, run, shard, tmp_path / "first")
    records = store.read_job(tmp_path / "first")
    generated = google_server.requests(":generateContent")
    assert records and not [r.error for r in records if r.has_error]
    assert first.model_calls == len(generated) == len(google_server.uploads) == sum(r.n_calls for r in records)
    assert sorted(google_server.deleted) == sorted(google_server.uploads)  # nothing left in the project's storage
    assert all(r.response == "yes A. 1 video" for r in records)
    # every record's answer came with a video of exactly the frames it lists, at their times from the first
    benchmark = DATASETS.build(job.dataset)
    prompts = {q.id: benchmark.prompt(q) for s in benchmark.load() for q in s.queries}
    shown = {}
    for request in generated:
        texts = [p["text"] for p in parts(request.body, "text")]
        [video] = parts(request.body, "fileData")
        shown[(texts[-1], texts[-2])] = _frame_times(
            google_server.uploads[video["fileData"]["file_uri"].rsplit("/", 1)[1]]
        )
    for record in records:
        first_s, last_s = record.frame_times_s[0], record.frame_times_s[-1]
        times = shown[(prompts[record.query_id], f"[{first_s:.1f} s to {last_s:.1f} s]")]
        assert times == pytest.approx([t - first_s for t in record.frame_times_s], abs=2e-3)
    assert sum(r.tokens_in for r in records) == sum(r.answer["usageMetadata"]["promptTokenCount"] for r in generated)

    asked = len(google_server.received)
    job, run, shard = compose_job(data_root, *overrides)
    run_job(job, run, shard, tmp_path / "again")  # a new folder, the same cache: no upload, no call
    again = store.read_job(tmp_path / "again")
    assert len(google_server.received) == asked
    assert sorted((r.query_id, r.response) for r in again) == sorted((r.query_id, r.response) for r in records)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [p for p in written if KEY.encode() in p.read_bytes()]  # the key reached no file
