"""The API layer's own arithmetic, on a fake clock: adaptive limits, request/token buckets, Retry-After pauses,
the retry waits, the budget, OpenAI's image token counts and what the job's config hash covers."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from backends.api import retry_after_s
from backends.api_limits import Limiter, LimitsConfig
from backends.base import BACKENDS
from backends.openai_chat import ImageDetail, ImageTokenRule, ImageTokensConfig, image_tokens
from harness.budget import Budget, BudgetExhausted
from harness.config import load_job, register
from harness.registry import Choice, plain
from tests.helpers import CONF, compose_job


class FakeClock:
    """Time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def _limiter(**limits) -> tuple[Limiter, FakeClock]:
    clock = FakeClock()
    return Limiter(LimitsConfig(**limits), clock=clock, sleep=clock.sleep), clock


def test_a_429_lowers_every_limit_once_per_wave_and_they_recover_by_small_steps():
    limiter, clock = _limiter(concurrency=8, requests_per_minute=600, decrease=0.5, recover_s=30, recover_step=0.1)
    assert (limiter.concurrency, limiter.scale) == (8, 1.0)
    limiter.rate_limited(wave=0, retry_after_s=None)
    assert (limiter.concurrency, limiter.scale, limiter.cuts) == (4, 0.5, 1)
    assert "300 requests/min" in limiter.describe()
    limiter.rate_limited(wave=0, retry_after_s=None)  # another call of the same wave: already answered
    assert (limiter.concurrency, limiter.cuts) == (4, 1)
    limiter.rate_limited(wave=1, retry_after_s=None)  # a call sent after the cut: a new wave
    assert (limiter.concurrency, limiter.scale, limiter.cuts) == (2, 0.25, 2)
    limiter.succeeded()  # too soon after the cut
    assert limiter.scale == 0.25
    clock.now += 30
    limiter.succeeded()
    assert limiter.scale == pytest.approx(0.35) and limiter.concurrency == 2
    limiter.succeeded()  # one step per recover_s, not per success
    assert limiter.scale == pytest.approx(0.35)
    for _ in range(10):  # back to the configured limits, never above
        clock.now += 30
        limiter.succeeded()
    assert (limiter.scale, limiter.concurrency) == (1.0, 8)


def test_limits_never_fall_below_one_call_in_flight():
    limiter, _ = _limiter(concurrency=2)
    for wave in range(20):
        limiter.rate_limited(wave=wave, retry_after_s=None)
    assert limiter.concurrency == 1 and limiter.scale > 0


def test_the_request_bucket_allows_a_burst_then_paces_at_the_per_minute_rate():
    limiter, clock = _limiter(concurrency=100, requests_per_minute=60)

    async def calls(n: int) -> list[float]:
        started = []
        for _ in range(n):
            async with limiter.slot(tokens=1):
                started.append(clock.now)
        return started

    started = asyncio.run(calls(13))
    assert started[:10] == [0.0] * 10  # ten seconds' worth at once
    assert started[10:] == pytest.approx([1.0, 2.0, 3.0])  # then one a second


def test_the_token_bucket_paces_by_tokens_and_a_429_slows_it_down():
    limiter, clock = _limiter(concurrency=100, tokens_per_minute=6000)  # 100 tokens a second, 1000 in the bucket

    async def call(tokens: int) -> float:
        async with limiter.slot(tokens):
            return clock.now

    assert asyncio.run(call(1000)) == 0.0
    assert asyncio.run(call(500)) == pytest.approx(5.0)
    limiter.rate_limited(wave=0, retry_after_s=None)  # 50 tokens a second now
    start = clock.now
    assert asyncio.run(call(100)) - start == pytest.approx(2.0)


def test_a_retry_after_pauses_every_stream_of_the_job():
    limiter, clock = _limiter(concurrency=4)
    limiter.rate_limited(wave=0, retry_after_s=2.5)

    async def two() -> list[float]:
        async def one() -> float:
            async with limiter.slot(tokens=1):
                return clock.now

        return list(await asyncio.gather(one(), one()))

    assert min(asyncio.run(two())) >= 2.5


def test_concurrency_slots_are_released_and_a_cut_takes_effect_for_new_calls():
    limiter, _ = _limiter(concurrency=2)
    peak = 0

    async def run(n: int) -> None:
        async def one() -> None:
            nonlocal peak
            async with limiter.slot(tokens=1):
                peak = max(peak, limiter._in_flight)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(run(6))
    assert peak == 2 and limiter._in_flight == 0
    limiter.rate_limited(wave=0, retry_after_s=None)
    peak = 0
    asyncio.run(run(4))
    assert peak == 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"Retry-After": "2"}, 2.0), ({"retry-after-ms": "250"}, 0.25), ({"Retry-After": "soon"}, None), ({}, None)],
)
def test_retry_after_headers(headers, expected):
    assert retry_after_s(headers) == expected


def test_retry_after_as_an_http_date_is_seconds_from_now():
    assert 0 <= retry_after_s({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) < 1  # in the past: no wait


def test_the_budget_reserves_worst_cases_refuses_from_then_on_and_counts_earlier_runs():
    budget = Budget(1.0, spent_before_usd=0.25)
    budget.admit(0.5)
    with pytest.raises(BudgetExhausted, match=r"run.budget_usd=1 reached"):
        budget.admit(0.3)  # 0.25 spent + 0.5 in flight + 0.3 > 1
    budget.settle(0.5, 0.1)  # the call cost less than its worst case ...
    with pytest.raises(BudgetExhausted):
        budget.admit(0.01)  # ... but a refusal is final: nothing is asked after it
    assert budget.reached and budget.spent_usd == pytest.approx(0.1) and budget.total_usd == pytest.approx(0.35)
    unlimited = Budget(None)
    unlimited.admit(1e9)
    unlimited.settle(1e9, 3.0)
    assert not unlimited.reached and unlimited.spent_usd == 3.0


@pytest.mark.parametrize(
    ("size", "detail", "rule", "tokens"),
    [
        ((1024, 1024), "high", "tiles", 765),  # OpenAI's worked examples
        ((2048, 4096), "high", "tiles", 1105),
        ((4096, 8192), "low", "tiles", 85),
        ((320, 240), "auto", "tiles", 255),
        ((1024, 1024), "auto", "patches", 1024),
        ((1800, 2400), "auto", "patches", 1452),
    ],
)
def test_openai_image_tokens(size, detail, rule, tokens):
    assert image_tokens(*size, ImageDetail(detail), ImageTokensConfig(rule=ImageTokenRule(rule))) == tokens


def test_the_config_hash_covers_what_answers_and_not_how_calls_are_made(tmp_path: Path):
    job = compose_job(tmp_path, "backend=openai")[0]
    cfg = job.backend.config

    def hashed(**changes) -> str:
        return dataclasses.replace(job, backend=Choice("backend", "openai", replace(cfg, **changes))).config_hash()

    reference = hashed()
    how = {
        "timeout_s": 5.0,
        "base_url": "http://127.0.0.1:9/v1",
        "api_key_env": "OTHER_KEY",
        "cache": False,
        "retry": replace(cfg.retry, rate_limit_tries=2, base_s=0.01),
        "limits": replace(cfg.limits, concurrency=1, requests_per_minute=10),
        "price": replace(cfg.price, input_per_mtok=99.0),
        "image_tokens": replace(cfg.image_tokens, per_tile=1),
    }
    for name, value in how.items():
        assert hashed(**{name: value}) == reference, name
    what = {
        "model": "gpt-4o-mini-2024-07-18",
        "temperature": 0.7,
        "image_max_side": 512,
        "image_detail": ImageDetail.low,
        "capabilities": replace(cfg.capabilities, max_images=4, temperature=False),
    }
    for name, value in what.items():
        assert hashed(**{name: value}) != reference, name
    saved = job.semantic()["backend"]
    assert {"model", "temperature", "capabilities", "image_detail"} <= set(saved)
    assert not set(how) & set(saved)
    # the same rule for a route's own backend
    s2 = dataclasses.replace(job.system, s2=dataclasses.replace(job.system.s2, backend=plain(cfg)))
    assert "timeout_s" not in dataclasses.replace(job, system=s2).semantic()["system"]["s2"]["backend"]


def test_every_api_model_preset_composes_and_prices_its_own_model():
    register()
    presets = sorted(
        (folder.name, p.stem)
        for folder in (CONF / "backend").iterdir()
        if folder.is_dir()
        for p in folder.glob("*.yaml")
    )
    api = [(backend, preset) for backend, preset in presets if hasattr(BACKENDS.implementation(backend), "offline")]
    assert ("openai", "gpt-4o") in api
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for backend, preset in api:
            option = f"{backend}/{preset}"
            text = (CONF / "backend" / backend / f"{preset}.yaml").read_text()
            assert f"Use: backend={option}" in text, (
                f"conf/backend/{option}.yaml: its comment says `Use: backend={option}`"
            )
            job = load_job(compose("config", overrides=[f"backend={option}"]))[0]
            cfg = job.backend.config
            assert cfg.price.model == cfg.model and cfg.price.input_per_mtok > 0, preset
            assert BACKENDS.implementation(backend).offline(cfg).priced, preset
