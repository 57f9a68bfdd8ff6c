"""Schedulers decide per query whether S1 (recent window) or S2 (memory + router) answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from harness.records import Query, Route
from harness.registry import Registry


class RouteName(str, Enum):
    S1 = "S1"
    S2 = "S2"


@dataclass(frozen=True)
class StreamState:
    """What a scheduler may know about the stream when the query arrives."""

    now_s: float
    memory_frames: int


@dataclass(frozen=True)
class Decision:
    route: Route
    reason: str  # recorded with the answer, for misroute analysis


class Scheduler(Protocol):
    def route(self, query: Query, state: StreamState) -> Decision: ...


SCHEDULERS: Registry[Scheduler] = Registry("scheduler")


@dataclass(frozen=True)
class ForceS1Config:
    name: str = "force_s1"


@dataclass(frozen=True)
class ForceS2Config:
    name: str = "force_s2"


@dataclass(frozen=True)
class Rule:
    """Matches when the task equals `task` (if set) and the question contains any of `keywords` (if set)."""

    route: RouteName = RouteName.S2
    task: str | None = None
    keywords: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RuleConfig:
    name: str = "rule"
    rules: list[Rule] = field(default_factory=list)  # first match wins
    default: RouteName = RouteName.S1


@SCHEDULERS.register("force_s1", ForceS1Config)
class ForceS1:
    def __init__(self, cfg: ForceS1Config) -> None:
        self.cfg = cfg

    def route(self, query: Query, state: StreamState) -> Decision:
        return Decision("S1", "forced")


@SCHEDULERS.register("force_s2", ForceS2Config)
class ForceS2:
    def __init__(self, cfg: ForceS2Config) -> None:
        self.cfg = cfg

    def route(self, query: Query, state: StreamState) -> Decision:
        return Decision("S2", "forced")


@SCHEDULERS.register("rule", RuleConfig)
class RuleScheduler:
    def __init__(self, cfg: RuleConfig) -> None:
        self.cfg = cfg

    def route(self, query: Query, state: StreamState) -> Decision:
        text = query.text.lower()
        for number, rule in enumerate(self.cfg.rules, start=1):
            if rule.task is not None and rule.task != query.task:
                continue
            hits = [k for k in rule.keywords if k.lower() in text]
            if rule.keywords and not hits:
                continue
            why = [f"task={rule.task}"] if rule.task else []
            why += [f"keyword={hits[0]!r}"] if hits else []
            return Decision(RouteName(rule.route).value, f"rule {number}: {', '.join(why)}")  # type: ignore[arg-type]
        return Decision(RouteName(self.cfg.default).value, "default")  # type: ignore[arg-type]
