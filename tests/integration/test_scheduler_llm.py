"""The llm scheduler from its real conf file, asking the openai backend (official SDK) on a local chat server:
yes goes to S2, no to S1, anything else or a failed call to the default, and the call is carried for costing."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import BACKENDS
from harness.budget import Budget
from harness.errors import ConfigError
from harness.records import Query
from harness.response_cache import ResponseCache
from harness.scheduler import SCHEDULERS, StreamState
from tests.fixtures.openai_server import Reply
from tests.helpers import compose_job

KEY_ENV = "HARNESS_TEST_OPENAI_KEY"
STATE = StreamState(now_s=42.0, memory_frames=84)
NOW, PAST = "What colour is the square on screen now?", "How many circles have appeared so far?"


def _scheduler(url: str, tmp_path, *overrides: str):
    """conf/scheduler/llm.yaml composed as a user runs it, its backend pointed at the local server."""
    job, _, _ = compose_job(
        tmp_path, "scheduler=llm", f"scheduler.backend.base_url={url}", f"scheduler.backend.api_key_env={KEY_ENV}",
        "scheduler.backend.retry.server_tries=1", *overrides,
    )  # fmt: skip
    backend = BACKENDS.build(BACKENDS.parse(job.scheduler.config.backend))
    assert SCHEDULERS.implementation("llm").needs_backend  # the job builds the backend and hands it in
    return SCHEDULERS.build(job.scheduler, backend), backend


def _route(scheduler, backend, *texts: str):
    async def ask():
        try:
            return [await scheduler.route(Query(f"q{i}", 42.0, t, "any", "mcq"), STATE) for i, t in enumerate(texts)]
        finally:
            await backend.aclose()

    return asyncio.run(ask())


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-scheduler")


def test_yes_goes_to_s2_and_no_to_s1_and_the_priced_call_comes_with_the_decision(openai_server, key, tmp_path):
    openai_server.reply = lambda body: Reply(
        "Yes." if "so far" in body["messages"][-1]["content"] else "no", prompt_tokens=57, completion_tokens=1
    )
    scheduler, backend = _scheduler(openai_server.url, tmp_path)
    past, now = _route(scheduler, backend, PAST, NOW)

    assert (past.route, past.reason, now.route, now.reason) == ("S2", "llm: yes", "S1", "llm: no")
    [call] = past.calls
    assert (call.text, call.tokens_in, call.tokens_out, call.cached) == ("Yes.", 57, 1, False)
    assert call.cost_usd == pytest.approx((57 * 2.50 + 1 * 10.00) / 1e6)  # gpt-4o list prices of the conf file
    body = openai_server.bodies[0]
    assert body["max_completion_tokens"] == 3 and body["model"] == "gpt-4o-2024-08-06"
    assert body["messages"] == [
        {"role": "system", "content": "You decide how a video assistant answers questions about a live video stream."},
        {
            "role": "user",
            "content": f"Question about a live video: {PAST}\nDoes answering this question need memory of what was "
            "shown earlier in the video, beyond the last few seconds? Answer with one word: yes or no.",
        },
    ]  # text only: no frame reaches the scheduler's model


def test_an_unreadable_reply_goes_to_the_default_and_is_still_recorded(openai_server, key, tmp_path):
    openai_server.reply = lambda body: "Maybe; it depends on the video"
    scheduler, backend = _scheduler(openai_server.url, tmp_path, "scheduler.default=S2")
    [decision] = _route(scheduler, backend, NOW)
    assert decision.route == "S2"
    assert decision.reason == "llm: unreadable reply 'Maybe; it depends on the video', default"
    assert [c.text for c in decision.calls] == ["Maybe; it depends on the video"]  # paid for: counted


def test_a_failed_call_goes_to_the_default_naming_the_error(openai_server, key, tmp_path):
    openai_server.reply = lambda body: Reply("the model is overloaded", status=500)
    scheduler, backend = _scheduler(openai_server.url, tmp_path)
    [decision] = _route(scheduler, backend, PAST)
    assert decision.route == "S1"
    assert decision.reason.startswith("llm: call failed (ServerError: ") and decision.reason.endswith("), default")
    assert "the model is overloaded" in decision.reason
    assert decision.calls == ()
    assert len(openai_server.received) == 1  # retry.server_tries=1


def test_the_question_is_asked_once_with_the_response_cache_attached(openai_server, key, tmp_path):
    openai_server.reply = lambda body: "yes"
    scheduler, backend = _scheduler(openai_server.url, tmp_path)
    backend.attach(ResponseCache(tmp_path / "responses.sqlite"), Budget(None))  # as the job does for every backend
    first, again = _route(scheduler, backend, PAST, PAST)
    assert first.route == again.route == "S2"
    assert (first.calls[0].cached, again.calls[0].cached) == (False, True)
    assert len(openai_server.received) == 1


def test_a_prompt_without_the_question_is_refused(openai_server, key, tmp_path):
    with pytest.raises(ConfigError, match=r"scheduler\.prompt must contain \{question\}"):
        _scheduler(openai_server.url, tmp_path, "scheduler.prompt='Is memory needed? yes or no'")
    with pytest.raises(ConfigError, match=r"scheduler\.max_new_tokens must be >= 1"):
        _scheduler(openai_server.url, tmp_path, "scheduler.max_new_tokens=0")
