"""Routers, memory and schedulers of the spine."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.memory import MEMORIES
from harness.records import Frame, Query
from harness.routers import ROUTERS
from harness.scheduler import SCHEDULERS, StreamState

QUERY = Query(id="q", time_s=10.0, text="What colour is the square on screen now?", task="realtime", kind="mcq")


def _memory_with(times):
    memory = MEMORIES.build(MEMORIES.parse({"name": "window", "window_s": 5.0}))
    for i, t in enumerate(times):
        memory.ingest(Frame(i, t, np.zeros((2, 2, 3), np.uint8)), None)
    return memory


def test_window_memory_forgets_old_frames_and_never_shows_the_future():
    memory = _memory_with([0.0, 2.0, 4.0, 6.0, 8.0])
    assert memory.view(8.0, "").times_s() == (4.0, 6.0, 8.0)
    assert memory.view(6.5, "").times_s() == (4.0, 6.0)


def test_recent_takes_the_last_frames_and_uniform_spreads_them():
    view = _memory_with([float(t) for t in range(5)]).view(4.0, "")  # window 5 s keeps all 5
    recent = ROUTERS.build(ROUTERS.parse({"name": "recent"}))
    uniform = ROUTERS.build(ROUTERS.parse({"name": "uniform"}))
    assert recent.select(None, view, 2).chosen == (3, 4)
    assert uniform.select(None, view, 3).chosen == (0, 2, 4)
    assert uniform.select(None, view, 10).chosen == (0, 1, 2, 3, 4)


def test_rule_scheduler_first_match_wins_with_a_reason():
    rule = SCHEDULERS.build(
        SCHEDULERS.parse(
            {"name": "rule", "rules": [{"task": "clue", "route": "S2"}, {"keywords": ["so far"], "route": "S2"}]}
        )
    )
    state = StreamState(now_s=10.0, memory_frames=20)
    assert asyncio.run(rule.route(QUERY, state)).route == "S1"
    clue = Query("c", 10.0, "What shape was it?", "clue", "mcq")
    assert asyncio.run(rule.route(clue, state)).reason == "rule 1: task=clue"
    counted = Query("r", 10.0, "How many circles have appeared so far?", "reasoning", "mcq")
    decision = asyncio.run(rule.route(counted, state))
    assert (decision.route, decision.reason) == ("S2", "rule 2: keyword='so far'")


def test_bad_values_name_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"Invalid value 'S3'.*S1, S2"):
        SCHEDULERS.parse({"name": "rule", "default": "S3"})
    with pytest.raises(ConfigError, match="Did you mean uniform"):
        ROUTERS.parse({"name": "unifrom"})
    with pytest.raises(ConfigError, match="window_sec"):
        MEMORIES.parse({"name": "window", "window_sec": 3})
