"""Which route each query of a job takes under a policy, and what that policy scores and pays offline.

Schedulers are the real objects of harness.scheduler, built from the job's own scheduler config when it names
the same policy, else from conf/scheduler/<name>.yaml (or a conf node given as a YAML file), and asked
`route(query, state)` with the query and stream state rebuilt from each record. `oracle` takes, per query, the
route that scored higher (a tie: the cheaper one); `recorded` is the route the run took; `threshold:SCORE[@θ]`
routes on one number (S1's confidence, the semantic similarity gap or the classifier's P(S2)), at one θ or swept
over every distinct value.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis.routing import ROUTES, Answers, Outcome, evaluate, pay
from harness.records import Query
from harness.scheduler import SCHEDULERS, Decision, StreamState

HELP = (
    "force_s1, force_s2, rule, semantic, classifier, oracle, recorded, threshold:SCORE[@θ] (SCORE: confidence, "
    "semantic or classifier), or a scheduler config FILE.yaml"
)
REPLAYED = ("force_s1", "force_s2", "rule", "semantic", "classifier")
BELOW = {"confidence": True, "semantic": False, "classifier": False}  # S2 when the score is below θ (else above)
REFUSED = {
    "llm": "asks a model for every query, so it cannot be replayed offline; score its own run with --policy recorded",
    "cascade": "is threshold:confidence@θ here (S2 when S1's confidence is below θ), e.g. threshold:confidence@0.7",
    "both": "is not a policy but the run that policies are replayed on",
}
CONF = Path(__file__).resolve().parents[1] / "conf" / "scheduler"
MODEL_FIELD = "checkpoint"  # the classifier's model file (python -m harness.train_scheduler), set by --model


@dataclass(frozen=True)
class Policy:
    text: str  # as given: the row label
    kind: str  # replay | oracle | recorded | threshold
    name: str  # the scheduler replayed, or the threshold's score
    theta: float | None = None  # threshold: one θ; None sweeps every distinct score
    node: dict[str, Any] | None = None  # replay: a scheduler conf node given as a YAML file

    @property
    def sweep(self) -> bool:
        return self.kind == "threshold" and self.theta is None

    @property
    def cascade(self) -> bool:
        """S1 answers first and S2 on top when escalated (both are paid)."""
        return self.kind == "threshold" and self.name == "confidence"


@dataclass(frozen=True)
class Decided:
    """A policy's choice for every row of a job's answers."""

    to_s2: np.ndarray  # bool
    reasons: list[str]
    score: np.ndarray  # what a threshold compares (NaN where there is none)


def parse_policy(text: str) -> Policy:
    if text.endswith((".yaml", ".yml")):
        try:
            node = yaml.safe_load(Path(text).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"--policy {text}: cannot read it as a scheduler config ({e})") from None
        name = str(node.get("name", "")) if isinstance(node, dict) else ""
        if name not in REPLAYED:
            raise ValueError(f"--policy {text}: its `name:` must be one of {', '.join(REPLAYED)}, got {name!r}")
        return Policy(text, "replay", name, node={k: v for k, v in node.items() if k != "defaults"})
    name, _, theta = text.partition("@")
    if name.startswith("threshold:"):
        score = name.split(":", 1)[1]
        if score not in BELOW:
            raise ValueError(f"--policy {text}: the threshold score must be one of {', '.join(BELOW)}")
        try:
            return Policy(text, "threshold", score, float(theta) if theta else None)
        except ValueError:
            raise ValueError(f"--policy {text}: θ after @ must be a number, e.g. threshold:{score}@0.5") from None
    if theta:
        raise ValueError(f"--policy {text}: only threshold policies take @θ")
    if text in REFUSED:
        raise ValueError(f"--policy {text}: {REFUSED[text]}")
    if text in ("oracle", "recorded"):
        return Policy(text, text, text)
    if text in REPLAYED:
        return Policy(text, "replay", text)
    raise ValueError(f"--policy {text}: unknown policy; choose {HELP}")


def decide(policy: Policy, answers: Answers, model: Path | None = None) -> Decided:
    """Each query's route under a policy (a threshold sweep gives its scores, and every query on S1)."""
    frame, n = answers.frame, len(answers.frame)
    if policy.kind == "recorded":
        reasons = [r or "(none recorded)" for r in frame["route_reason"]]
        return Decided((frame["route"] == "S2").to_numpy(bool), reasons, frame["route_score"].to_numpy(float))
    if policy.kind == "oracle":
        return _oracle(frame)
    if policy.kind == "replay":
        made = replay(scheduler_choice(policy, answers, model), frame)
        return Decided(np.array([d.route == "S2" for d in made], bool), [d.reason for d in made], _scores(made))
    score = threshold_scores(policy, answers, model)
    if policy.theta is None:
        return Decided(np.zeros(n, bool), [""] * n, score)
    to_s2 = _escalated(score, policy.theta) if BELOW[policy.name] else score > policy.theta
    sign = {True: "<" if BELOW[policy.name] else ">", False: ">=" if BELOW[policy.name] else "<="}
    reasons = [f"{policy.name} {_shown(s)} {sign[bool(t)]} {policy.theta:g}" for s, t in zip(score, to_s2, strict=True)]
    return Decided(to_s2, reasons, score)


def needs(policy: Policy, decided: Decided) -> tuple[np.ndarray, np.ndarray]:
    """Per query, whether the policy needs S1's answer and S2's (an answer it needs but lacks leaves it out)."""
    ones = np.ones(len(decided.to_s2), bool)
    if policy.kind == "oracle" or policy.sweep:
        return ones, ones
    if policy.cascade:
        return ones, decided.to_s2
    return ~decided.to_s2, decided.to_s2


def simulate(
    policy: Policy, answers: Answers, model: Path | None = None, latency: str = "measured", failures: str = "official"
) -> list[Outcome]:
    """The policy's outcome on a job; a threshold sweep gives one per θ (-inf, every distinct score, +inf)."""
    decided = decide(policy, answers, model)
    need_s1, need_s2 = needs(policy, decided)
    kept = np.flatnonzero((~need_s1 | answers.asked("S1")) & (~need_s2 | answers.asked("S2")))
    paid = pay(answers, latency, "recorded" if policy.kind == "recorded" else "cascade" if policy.cascade else "switch")
    missing = len(answers.frame) - len(kept)
    if not policy.sweep:
        to_s2 = decided.to_s2[kept]
        order = np.concatenate([kept[to_s2], kept[~to_s2]])
        return evaluate(answers, order, [int(to_s2.sum())], paid, failures, missing)
    score = decided.score[kept]
    finite = np.sort(score[~np.isnan(score)])
    thetas = np.array([-math.inf, *np.unique(finite), math.inf])
    if BELOW[policy.name]:  # S2 when below θ; an unstated confidence always escalates, as the cascade does
        order = kept[np.argsort(np.where(np.isnan(score), -math.inf, score), kind="stable")]
        switched = (len(score) - len(finite)) + np.searchsorted(finite, thetas, "left")
    else:  # S2 when above θ
        order = kept[np.argsort(-np.nan_to_num(score, nan=-math.inf), kind="stable")]
        switched = len(finite) - np.searchsorted(finite, thetas, "right")
    return evaluate(answers, order, switched, paid, failures, missing, thetas)


def scheduler_choice(policy: Policy, answers: Answers, model: Path | None = None) -> Any:
    """The parsed scheduler config: the policy's YAML node, the job's own config when it ran this scheduler,
    else conf/scheduler/<name>.yaml; --model sets the classifier's model file."""
    recorded = answers.config.get("scheduler") or {}
    if policy.node is not None:
        params = dict(policy.node)
    elif recorded.get("name") == policy.name:
        params = dict(recorded)
    else:
        params = _conf_default(policy.name)
    if model is not None and policy.name == "classifier":
        params[MODEL_FIELD] = str(model)
    return SCHEDULERS.parse(params)


def replay(choice: Any, frame: pd.DataFrame) -> list[Decision]:
    """The scheduler's decision for every row, with the query and stream state rebuilt from the record."""
    scheduler = SCHEDULERS.build(choice)
    queries = [
        (Query(str(r.query_id), float(r.time_s), str(r.question), str(r.task), r.kind),
         StreamState(float(r.time_s), int(r.memory_frames), None if math.isnan(r.since_scene_change_s)
                     else float(r.since_scene_change_s)))
        for r in frame.itertuples(index=False)
    ]  # fmt: skip

    async def route_all() -> list[Decision]:
        return [await scheduler.route(query, state) for query, state in queries]

    return asyncio.run(route_all())


def threshold_scores(policy: Policy, answers: Answers, model: Path | None = None) -> np.ndarray:
    """The number a threshold policy compares, per query: S1's confidence, or the score of the replayed policy."""
    if policy.name == "confidence":
        return answers.frame["S1.confidence"].to_numpy(float)
    made = replay(scheduler_choice(Policy(policy.name, "replay", policy.name), answers, model), answers.frame)
    return _scores(made)


def policy_label(policy: Policy, outcome: Outcome) -> str:
    """A row's policy: a sweep's point says its θ."""
    return policy.text if outcome.theta is None else f"threshold:{policy.name}@{outcome.theta:.4g}"


def safe_name(policy: Policy) -> str:
    """The policy as a file name part (threshold:confidence@0.6 -> threshold-confidence-0.6)."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", Path(policy.text).stem if policy.node else policy.text).strip("-")


def _oracle(frame: pd.DataFrame) -> Decided:
    """S2 where it scored higher; on a tie, the cheaper route (cost_usd, then modelled, then measured latency;
    S1 when all are equal), the rule the classifier's training labels follow."""
    s1, s2 = (np.nan_to_num(frame[f"{r}.score"].to_numpy(float), nan=-math.inf) for r in ROUTES)
    cheaper_s2, decided = np.zeros(len(frame), bool), np.zeros(len(frame), bool)
    for usage in ("cost_usd", "modelled_latency_s", "latency_s"):
        a, b = (frame[f"{r}.{usage}"].to_numpy(float) for r in ROUTES)
        differs = ~decided & ~np.isnan(a) & ~np.isnan(b) & (a != b)
        cheaper_s2 |= differs & (b < a)
        decided |= differs
    tie = s1 == s2
    to_s2 = (s2 > s1) | (tie & cheaper_s2)
    reasons = np.where(tie, np.where(cheaper_s2, "oracle: tie, S2 cheaper", "oracle: tie, S1 cheaper or same"),
                       np.where(to_s2, "oracle: S2 scored higher", "oracle: S1 scored higher"))  # fmt: skip
    return Decided(to_s2, reasons.tolist(), np.where(tie, np.nan, s2 - s1))


def _escalated(confidence: np.ndarray, theta: float) -> np.ndarray:
    """The cascade's rule: S2 when S1's confidence is below θ or unstated."""
    with np.errstate(invalid="ignore"):
        return np.isnan(confidence) | (confidence < theta)


def _scores(made: list[Decision]) -> np.ndarray:
    return np.array([math.nan if d.score is None else d.score for d in made], float)


def _shown(score: float) -> str:
    return "unstated" if math.isnan(score) else f"{score:.2f}"


def _conf_default(name: str) -> dict[str, Any]:
    path = CONF / f"{name}.yaml"
    if not path.is_file():
        return {"name": name}
    node = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in node.items() if k != "defaults"}
