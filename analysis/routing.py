"""Offline routing: what an S1/S2 policy would have scored, paid and waited, computed from answers a run holds.

A `scheduler=both` run keeps both routes' answers per query (ResultRecord.paths), so any policy is replayed by
choosing, per query, whose answer counts and whose calls are paid, without asking a model again. Older records
and single-route runs hold their own route's answer only; `--with` folders (a rerun of the other route) fill the
gaps by query id. A query whose needed route has no answer is left out and counted, never guessed. Accuracy is
the benchmark's own aggregation (analysis.aggregate) over the queries kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis.aggregate import Sums, aggregation, record_values
from analysis.causes import OK, error_cause
from analysis.load import SAFE_LOADER, find_jobs
from analysis.scores import adapter_tasks
from harness.errors import DataError
from harness.records import ResultRecord
from harness.runner.store import read_job

ROUTES = ("S1", "S2")
USAGE = ("cost_usd", "latency_s", "modelled_latency_s")
LATENCIES = {"measured": "latency_s", "modelled": "modelled_latency_s"}
_QUERY = ("query_id", "sample_id", "task", "kind", "time_s", "question", "memory_frames", "since_scene_change_s",
          "route", "route_reason", "route_score", "policy")  # fmt: skip
_ROUTE = ("asked", "score", "cause", *USAGE, *(f"polls.{u}" for u in USAGE), "confidence", "response", "parsed")
COLUMNS = (*_QUERY, *(f"{r}.{c}" for r in ROUTES for c in _ROUTE), *(f"recorded.{u}" for u in USAGE))


@dataclass(frozen=True)
class Answers:
    """One job's queries, a row each: the query, the stream state its scheduler saw, and per route the answer
    and its usage (`S1.score`, `S2.cost_usd`, ...); `<route>.asked` is False where that route never answered.
    `recorded.<usage>` is what the run itself paid for the query under its own policy."""

    job: str  # the folder relative to the run
    path: Path
    config: dict[str, Any]  # config.yaml as saved
    frame: pd.DataFrame
    filled: int = 0  # route answers taken from --with folders

    @property
    def dataset(self) -> str:
        return str((self.config.get("dataset") or {}).get("name"))

    def asked(self, route: str) -> np.ndarray:
        return self.frame[f"{route}.asked"].to_numpy(bool)


@dataclass(frozen=True)
class Pay:
    """Per query, what a policy pays when S1's answer counts and when S2's does: (if S1, if S2) arrays."""

    cost_usd: tuple[np.ndarray, np.ndarray]
    latency_s: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Outcome:
    """A policy on one job, over the `n` queries it could be scored on: scores per task family, category and
    overall (the benchmark's unit), the share sent to S2, and the mean dollars and seconds per query."""

    n: int
    missing: int  # queries left out: a route the policy needs has no answer
    scores: dict[str, float]  # by name: task families, categories, "overall"
    levels: dict[str, tuple[str, ...]]  # tasks / categories / overall -> their names in `scores`
    s2_share: float
    cost_usd: float
    latency_s: float
    theta: float | None = None  # the threshold of a sweep's point


def load_answers(run_dir: Path, with_dirs: Sequence[Path] = ()) -> list[Answers]:
    """Every job of a run (a sweep folder or one job folder); route answers it lacks are taken from the jobs of
    `with_dirs` that have the same config apart from the scheduler."""
    donors = [a for folder in with_dirs for a in _answers_of(Path(folder))]
    return [_filled(a, donors) for a in _answers_of(Path(run_dir))]


def pay(answers: Answers, latency: str, how: str = "switch") -> Pay:
    """`switch`: only the route whose answer counts is paid; `cascade`: S1 always, S2's answer too when escalated;
    `recorded`: what the run paid (its policy's own calls included; a `both` run: the kept route only)."""
    frame, out = answers.frame, {}
    for usage, column in (("cost_usd", "cost_usd"), ("latency_s", LATENCIES[latency])):
        if how == "recorded":
            paid = frame[f"recorded.{column}"].to_numpy(float)
            out[usage] = (paid, paid)
        else:
            s1, s2 = (frame[f"{r}.{column}"].to_numpy(float) for r in ROUTES)
            # an escalated cascade asks S2 once S1's trigger fired: S2's own polls (a `both` run) are not paid
            escalated = s1 + s2 - frame[f"S2.polls.{column}"].to_numpy(float)
            out[usage] = (s1, escalated if how == "cascade" else s2)
    return Pay(**out)


def evaluate(
    answers: Answers,
    order: np.ndarray,
    switched: Sequence[int],
    paid: Pay,
    failures: str = "official",
    missing: int = 0,
    thetas: Sequence[float] | None = None,
) -> list[Outcome]:
    """One outcome per m in `switched`: the first m queries of `order` (row numbers) answered by S2, the rest of
    `order` by S1. A threshold sweep passes its queries sorted by score and one m per threshold, so each
    threshold costs a row of cumulative sums rather than a pass over the queries."""
    frame = answers.frame.iloc[order]
    agg = aggregation(answers.dataset, adapter_tasks(answers.dataset))
    views = [_view(frame, route) for route in ROUTES]
    parts = [agg.contribute(view, *record_values(view, agg, failures, "official")) for view in views]
    keys = sorted({str(k) for part in parts[0] for k in part[0]})
    n, index, m = len(order), {k: i for i, k in enumerate(keys)}, np.asarray(switched, int)
    base = np.zeros((2, len(keys)))  # (value, count) per key with every query on S1
    steps = np.zeros((2, n + 1, len(keys)))  # row i: the change when the first i queries move to S2
    rows = np.arange(1, n + 1)
    for (k1, v1, c1), (_, v2, c2) in zip(parts[0], parts[1], strict=True):
        column = np.fromiter((index[str(k)] for k in k1), int, count=n)
        c1, c2 = c1.astype(float), c2.astype(float)
        np.add.at(base[0], column, v1 * c1)
        np.add.at(base[1], column, c1)
        np.add.at(steps[0], (rows, column), v2 * c2 - v1 * c1)
        np.add.at(steps[1], (rows, column), c2 - c1)
    steps = steps.cumsum(axis=1)
    combined = agg.combine(Sums(tuple(keys), base[0] + steps[0, m], base[1] + steps[1, m]))
    levels = {"tasks": tuple(combined.tasks), "categories": tuple(combined.categories), "overall": ("overall",)}
    scores = combined.columns()
    cost, latency = _totals(paid.cost_usd, order, m), _totals(paid.latency_s, order, m)
    per = 1 / n if n else math.nan
    out = []
    for i, theta in enumerate([None] * len(m) if thetas is None else thetas):
        at = {k: float(v[i]) for k, v in scores.items()}
        point = None if theta is None else float(theta)
        out.append(Outcome(n, missing, at, levels, m[i] * per, cost[i] * per, latency[i] * per, point))
    return out


def pareto(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The points no other point beats (as accurate, y, for no more x, and better in one); of equal points the
    first."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    front, best = np.zeros(len(x), bool), -math.inf
    for i in np.lexsort((-y, x)):  # cheapest first, the most accurate first among equals
        if not math.isnan(x[i]) and y[i] > best:
            front[i], best = True, y[i]
    return front


def _answers_of(root: Path) -> list[Answers]:
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected outputs/<run.name>/ or one job folder in it)")
    found = find_jobs(root)
    if not found:
        raise DataError(f"{root}: no job folder (one with config.yaml) here or below; is this outputs/<run.name>/?")
    return [_job_answers(path, path.relative_to(root).as_posix() if path != root else path.name) for path in found]


def _job_answers(path: Path, job: str) -> Answers:
    try:
        config = yaml.load((path / "config.yaml").read_text(), Loader=SAFE_LOADER) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path / 'config.yaml'}: not YAML ({e}); restore it from .hydra/config.yaml") from None
    records = {r.query_id: r for r in read_job(path)}  # a query's last record wins (an error retried later)
    frame = pd.DataFrame([_row(r) for r in records.values()], columns=list(COLUMNS))
    frame = frame.sort_values(["sample_id", "time_s", "query_id"], kind="stable", ignore_index=True)
    return Answers(job, path, config, frame)


def _row(record: ResultRecord) -> dict[str, Any]:
    """One record as a row. An error record holds no path: the query failed, whichever route it went to."""
    paths: Mapping[str, Mapping[str, Any]] = record.paths or _own_path(record)
    failed = record.error is not None and not record.paths
    memory = record.features.get("memory_frames")
    row: dict[str, Any] = {
        "query_id": record.query_id, "sample_id": record.sample_id, "task": record.task, "kind": record.kind,
        "time_s": record.time_s, "question": record.question,
        "memory_frames": float(record.memory_frames if memory is None else memory),
        "since_scene_change_s": _number(record.features.get("since_scene_change_s")),
        "route": record.route or "", "route_reason": record.route_reason,
        "route_score": _number(record.route_score), "policy": record.policy,
    }  # fmt: skip
    for route in ROUTES:
        path = paths.get(route, {} if failed else None)
        score = None if path is None else path.get("score")
        cause = OK if score is not None else error_cause(record.error) if record.error else "other_error"
        row[f"{route}.asked"] = path is not None
        row[f"{route}.score"] = _number(score)
        row[f"{route}.cause"] = cause if path is not None else OK
        for usage in USAGE:  # nothing asked costs nothing (sums stay finite); an answer's unmodelled latency is NaN
            value = None if path is None else path.get(usage)
            unknown = usage == "modelled_latency_s" and score is not None
            row[f"{route}.{usage}"] = (math.nan if unknown else 0.0) if value is None else float(value)
            polled = None if path is None else path.get("polls", {}).get(usage)  # a proactive query's polls
            row[f"{route}.polls.{usage}"] = 0.0 if polled is None else float(polled)
        row[f"{route}.confidence"] = _number(None if path is None else path.get("confidence"))
        row[f"{route}.response"] = None if path is None else path.get("response")
        row[f"{route}.parsed"] = None if path is None else path.get("parsed")
    kept = [p for name, p in paths.items() if not (record.policy == "both" and name in ROUTES and name != record.route)]
    for usage in USAGE:
        row[f"recorded.{usage}"] = _sum(p.get(usage) for p in kept)
    return row


def _own_path(record: ResultRecord) -> dict[str, dict[str, Any]]:
    """An older record (no `paths`): its own route's answer and usage, from the top-level fields."""
    if record.route is None:
        return {}
    fields = ("score", "response", "parsed", *USAGE)
    return {record.route: {name: getattr(record, name) for name in fields}}


def _filled(answers: Answers, donors: Iterable[Answers]) -> Answers:
    """`answers` with each route answer it lacks taken from a donor job of the same config (scheduler aside)."""
    frame, filled, identity = answers.frame.copy(), 0, _identity(answers.config)
    for donor in donors:
        if donor.path.resolve() == answers.path.resolve() or _identity(donor.config) != identity:
            continue
        other = donor.frame.set_index("query_id")
        for route in ROUTES:
            has = other.index[other[f"{route}.asked"].to_numpy(bool)]
            need = (~frame[f"{route}.asked"].to_numpy(bool)) & frame["query_id"].isin(has).to_numpy()
            ids = frame.loc[need, "query_id"]
            for column in (f"{route}.{c}" for c in _ROUTE):
                frame.loc[need, column] = other.loc[ids, column].to_numpy()
            filled += int(need.sum())
    return Answers(answers.job, answers.path, answers.config, frame, answers.filled + filled)


def _identity(config: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "scheduler"}, sort_keys=True, default=str)


def _view(frame: pd.DataFrame, route: str) -> pd.DataFrame:
    """One route's answers in the columns the aggregations read (as analysis.load names them)."""
    response = frame[f"{route}.response"]
    return pd.DataFrame({
        "task": frame["task"].to_numpy(object), "kind": frame["kind"].to_numpy(object),
        "score": frame[f"{route}.score"].to_numpy(float), "cause": frame[f"{route}.cause"].to_numpy(object),
        "empty_response": (response == "").to_numpy(bool),
    })  # fmt: skip


def _totals(pair: tuple[np.ndarray, np.ndarray], order: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Sum over `order` of the S2 value for its first m queries and the S1 value for the rest, per m."""
    s1, s2 = pair[0][order], pair[1][order]
    return s1.sum() + np.concatenate([[0.0], np.cumsum(s2 - s1)])[m]


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _sum(values: Iterable[Any]) -> float:
    known = [float(v) for v in values if v is not None]
    return float(sum(known)) if known else math.nan
