"""Learned-free routing policies on crafted questions: each route's typical question lands there, with a reason."""

from __future__ import annotations

import asyncio
import re

import pytest

from harness.errors import ConfigError
from harness.records import Query
from harness.scheduler import SCHEDULERS, StreamState

STATE = StreamState(now_s=30.0, memory_frames=40)


def _query(text: str) -> Query:
    return Query(id="q", time_s=30.0, text=text, task="any", kind="mcq")


def _semantic(**fields):
    return SCHEDULERS.build(SCHEDULERS.parse({"name": "semantic", **fields}))


@pytest.fixture(scope="module")
def semantic():
    return _semantic()


@pytest.mark.parametrize(
    ("text", "route"),
    [
        ("What colour is the square on screen now?", "S1"),
        ("What is the dog doing?", "S1"),
        ("Is the light on?", "S1"),
        ("How many circles have appeared so far?", "S2"),
        ("Which was the first animal shown?", "S2"),
        ("Where did the man put the keys earlier?", "S2"),
        ("How many red squares have you seen in total?", "S2"),
    ],
)
def test_semantic_sends_questions_about_now_to_s1_and_about_the_past_to_s2(semantic, text, route):
    decision = asyncio.run(semantic.route(_query(text), STATE))
    other = "S2" if route == "S1" else "S1"
    match = re.fullmatch(rf"semantic: {route} (0\.\d\d) vs {other} (-?0\.\d\d)", decision.reason)
    assert decision.route == route, decision.reason
    assert match and float(match[1]) - float(match[2]) > 0.05  # beats the other route by more than the margin


def test_semantic_close_calls_go_to_the_default_with_both_similarities(semantic):
    undecided = _semantic(margin=1.0, default="S2")  # cosines of unit vectors differ by at most 2, usually far less
    decision = asyncio.run(undecided.route(_query("What colour is the square on screen now?"), STATE))
    assert decision.route == "S2"
    assert re.fullmatch(r"semantic: S1 0\.\d\d vs S2 0\.\d\d within margin 1, default", decision.reason)


def test_semantic_routes_by_the_configured_prototypes_not_built_in_words():
    swapped = _semantic(prototypes={"S1": ["How many times has it appeared so far?"], "S2": ["What is on screen now?"]})
    assert asyncio.run(swapped.route(_query("How many circles have appeared so far?"), STATE)).route == "S1"
    assert asyncio.run(swapped.route(_query("What colour is the square on screen now?"), STATE)).route == "S2"


def test_semantic_bad_config_names_the_field_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"prototypes\.S2 is empty; give at least one example question"):
        _semantic(prototypes={"S1": ["What is on screen now?"], "S2": []})
    with pytest.raises(ConfigError, match="margin must be >= 0"):
        _semantic(margin=-0.1)
    with pytest.raises(ConfigError, match=r"scheduler\.model_path.*no config\.json there"):
        _semantic(model_path=str(tmp_path))
    with pytest.raises(ConfigError, match="prototypes.S3"):
        SCHEDULERS.parse({"name": "semantic", "prototypes": {"S3": ["What now?"]}})
