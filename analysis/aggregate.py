"""Each benchmark's official aggregation, from per-record scores to tasks, categories and overall.

The one place that maps a dataset name to how its numbers are formed (AGGREGATIONS); a dataset without an
entry gets the job summary's rule (task families, overall = their unweighted mean). Every aggregation is a
function of per-key sums (sum of values, number counted), so the same code gives a job's table row and, over
resampled videos, a bootstrap or permutation distribution (analysis.ablation): each record contributes a value
and a count to one or more keys, `combine` turns the sums into scores. Parity with the official scorers on the
same records is tested.

Failures (causes.ERRORS) follow a policy: `official` is what the benchmark's own scorer does with an unanswered
query (OVO-Bench scores a null response wrong; StreamingBench's count.py and the judged benchmarks leave it
out of the denominator); `wrong` and `excluded` impose one rule on every benchmark, judge failures included.
An unparseable answer is an answer: it is always scored, as the benchmark's rule scores it (wrong).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.causes import ERRORS

POLICIES = ("official", "wrong", "excluded")
METRICS = ("official", "robust")
Part = tuple[np.ndarray, np.ndarray, np.ndarray]  # (key per record, value per record, counted per record)


@dataclass(frozen=True)
class Sums:
    """Per-key sums over rows (a row is a job, a video, or a resample): value[r, k] and count[r, k]."""

    keys: tuple[str, ...]
    value: np.ndarray
    count: np.ndarray

    def mean(self, key: str) -> np.ndarray:
        if key not in self.keys:
            return np.full(self.value.shape[0], np.nan)
        i = self.keys.index(key)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count[:, i] > 0, self.value[:, i] / self.count[:, i], np.nan)

    def micro(self, keys: Sequence[str]) -> np.ndarray:
        """Pooled mean over several keys (sum of values / sum of counts)."""
        index = [self.keys.index(k) for k in keys if k in self.keys]
        value, count = self.value[:, index].sum(axis=1), self.count[:, index].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, value / count, np.nan)

    def present(self, keys: Sequence[str]) -> list[str]:
        return [k for k in keys if k in self.keys]


@dataclass(frozen=True)
class Levels:
    """Scores per row: tasks and categories in the benchmark's order, then overall; NaN where nothing counted."""

    tasks: dict[str, np.ndarray]
    categories: dict[str, np.ndarray]
    overall: np.ndarray

    def columns(self, levels: Sequence[str] = ("tasks", "categories", "overall")) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if "tasks" in levels:
            out.update(self.tasks)
        if "categories" in levels:
            out.update(self.categories)
        if "overall" in levels:
            out["overall"] = self.overall
        return out


@dataclass(frozen=True)
class Aggregation:
    benchmark: str  # the name tables print
    failures: str  # the official rule for an unanswered query: "wrong" or "excluded"
    rule: str  # how categories and overall are formed, printed under every table
    # (records, value, counted, failed) -> contributions; value is 0 where failed, counted follows the policy
    contribute: Callable[[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray], list[Part]]
    combine: Callable[[Sums], Levels]
    judge_fails: bool = False  # official: a record with an unreadable judgment follows the failure rule
    unit: str = "accuracy %"


def aggregation(dataset: str, order: Sequence[str] = ()) -> Aggregation:
    """The dataset's official aggregation; otherwise task families in `order` (the adapter's, from summary.json)."""
    return AGGREGATIONS[dataset]() if dataset in AGGREGATIONS else _families(dataset, tuple(order))


def record_values(
    frame: pd.DataFrame, agg: Aggregation, policy: str, metric: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, counted, failed) per record after the failure policy; value in [0, 1], 0 where failed."""
    if policy not in POLICIES:
        raise ValueError(f"failure policy {policy!r}: choose one of {', '.join(POLICIES)}")
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
    cause = frame["cause"].to_numpy()
    failed = np.isin(cause, ERRORS)
    if policy != "official" or agg.judge_fails:
        failed |= cause == "judge_error"
    score = frame["score"].to_numpy(dtype=float, na_value=np.nan)
    if metric == "robust" and "sub.robust" in frame:
        robust = frame["sub.robust"].to_numpy(dtype=float, na_value=np.nan)
        score = np.where(np.isnan(robust), score, robust)  # a task without a stricter parser keeps its score
    value = np.where(failed | np.isnan(score), 0.0, score)
    rule = agg.failures if policy == "official" else policy
    counted = np.ones(len(frame), bool) if rule == "wrong" else ~failed
    return value, counted, failed


def sums(frame: pd.DataFrame, agg: Aggregation, policy: str, metric: str, by: Sequence[str]) -> pd.DataFrame:
    """Sums per group of `by` (columns ("value", key) and ("count", key)), one row per group."""
    parts = agg.contribute(frame, *record_values(frame, agg, policy, metric))
    groups = {b: frame[b].to_numpy() for b in by}
    long = pd.concat(
        [pd.DataFrame({**groups, "key": k, "value": v * c, "count": c.astype(float)}) for k, v, c in parts],
        ignore_index=True,
    )
    table = long.groupby([*by, "key"], observed=True, sort=True)[["value", "count"]].sum()
    return table.unstack("key", fill_value=0.0)


def as_sums(table: pd.DataFrame) -> Sums:
    keys = tuple(table["count"].columns)
    return Sums(keys, table["value"][list(keys)].to_numpy(float), table["count"][list(keys)].to_numpy(float))


# ---- the aggregations


def _task_part(frame: pd.DataFrame, value: np.ndarray, counted: np.ndarray, failed: np.ndarray) -> list[Part]:
    return [(frame["task"].to_numpy(dtype=object), value, counted)]


def _families(dataset: str, order: tuple[str, ...]) -> Aggregation:
    def combine(s: Sums) -> Levels:
        tasks = {k: 100 * s.mean(k) for k in _ordered(s.keys, order)}
        return Levels(tasks, {}, _nanmean(list(tasks.values()), len(s.value)))

    return Aggregation(dataset, "wrong", "overall = unweighted mean of the task families", _task_part, combine)


def _ovo_bench() -> Aggregation:
    categories = importlib.import_module("harness.benchmarks.ovo_bench_scoring").CATEGORIES

    def combine(s: Sums) -> Levels:
        order = [t for codes in categories.values() for t in codes]
        tasks = {k: 100 * s.mean(k) for k in _ordered(s.keys, order)}
        cats = {}
        for name, codes in categories.items():
            if present := [tasks[c] for c in codes if c in tasks]:
                cats[name] = _nanmean(present, len(s.value))
        return Levels(tasks, cats, _nanmean(list(cats.values()), len(s.value)))

    rule = "category = mean of its task accuracies; overall = mean of the categories (OVO-Bench score.py)"
    return Aggregation("OVO-Bench", "wrong", rule, _task_part, combine)


def _streamingbench() -> Aggregation:
    categories = importlib.import_module("harness.benchmarks.streamingbench_scoring").CATEGORIES

    def contribute(frame: pd.DataFrame, value: np.ndarray, counted: np.ndarray, failed: np.ndarray) -> list[Part]:
        task = frame["task"].to_numpy(dtype=object)
        proactive = task == "PO"
        keys = np.where(proactive, "PO_content", task)
        counted = counted & ~(frame["empty_response"].to_numpy() & ~proactive)  # count.py skips an empty response
        timing = _column(frame, "sub.time")  # PO (its time_accuracy); PO_content is the score
        timing = np.where(failed, 0.0, np.nan_to_num(timing))
        return [(keys, value, counted), (np.full(len(task), "PO", object), timing, counted & proactive)]

    def combine(s: Sums) -> Levels:
        order = [t for codes in categories.values() for t in codes]
        order.insert(order.index("PO_content"), "PO")
        tasks = {k: 100 * s.mean(k) for k in _ordered(s.keys, order)}
        cats = {}
        for name, codes in categories.items():
            present = [c for c in codes if c in tasks]
            if present and name == "Omni-Source":
                cats[name] = _nanmean([tasks[c] for c in present], len(s.value))
            elif present:
                cats[name] = 100 * s.micro(present)
        return Levels(tasks, cats, 100 * s.micro([k for k in tasks if k != "PO"]))

    rule = (
        "Real-Time and Contextual = micro averages, Omni-Source = mean of its tasks, overall = micro average over "
        "every question with PO_content (StreamingBench count.py and the published tables)"
    )
    return Aggregation("StreamingBench", "excluded", rule, contribute, combine)


def _streambench() -> Aggregation:
    known = importlib.import_module("harness.benchmarks.streambench").KNOWN_CLASSES

    def contribute(frame: pd.DataFrame, value: np.ndarray, counted: np.ndarray, failed: np.ndarray) -> list[Part]:
        task = frame["task"].to_numpy(dtype=object)
        judged = _column(frame, "sub.judge_score")
        has_score = ~np.isnan(judged)
        keys = np.char.add(task.astype(str), " score").astype(object)
        return [(task, value, counted & (has_score | failed)), (keys, np.nan_to_num(judged), counted & has_score)]

    def combine(s: Sums) -> Levels:
        classes = _ordered([k for k in s.keys if not k.endswith(" score")], known)
        tasks = {k: 100 * s.mean(k) for k in classes}
        scores = {f"{k} score": s.mean(f"{k} score") for k in classes}
        scores["score"] = s.micro([f"{k} score" for k in classes])
        return Levels(tasks, scores, 100 * s.micro(classes))

    rule = "accuracy = #yes / (#yes + #no) per class and overall; '<class> score' and 'score': mean judge score 0-5"
    return Aggregation("StreamBench", "excluded", rule, contribute, combine, judge_fails=True)


def _cogstream() -> Aggregation:
    module = importlib.import_module("harness.benchmarks.cogstream_scoring")
    dims = module.DIMENSIONS

    def contribute(frame: pd.DataFrame, value: np.ndarray, counted: np.ndarray, failed: np.ndarray) -> list[Part]:
        n = len(frame)
        task = frame["task"].to_numpy(dtype=object)
        tabled = ~np.isin(task, module.UNTABLED)
        scores = np.stack([_column(frame, f"sub.{d}") for d in dims], axis=1)
        present = ~np.isnan(scores)
        readable_dims = present.sum(axis=1)
        per_qa = np.nan_to_num(scores).sum(axis=1) / np.maximum(readable_dims, 1)  # mean of the readable dimensions
        readable = (readable_dims > 0) | failed  # a failure reaches here only where the policy counts it
        parts = [(task, np.where(failed, 0.0, 10 * per_qa), counted & tabled & readable)]
        for i, d in enumerate(dims):
            keep = counted & tabled & (present[:, i] | failed)
            value_d = np.where(failed, 0.0, 10 * np.nan_to_num(scores[:, i]))
            parts.append((np.full(n, f"dim:{d}", object), value_d, keep))
        return parts

    def combine(s: Sums) -> Levels:
        tasks = {k: s.mean(k) for k in _ordered([k for k in s.keys if not k.startswith("dim:")], module.TASKS)}
        cats = {d: s.mean(f"dim:{d}") for d in dims if f"dim:{d}" in s.keys}
        return Levels(tasks, cats, _nanmean(list(cats.values()), len(s.value)))

    rule = "score 0-100: capability = 10 x mean per-QA score, dimension = 10 x its mean, overall = mean of the five"
    return Aggregation("CogStream", "excluded", rule, contribute, combine, unit="score 0-100")


AGGREGATIONS: dict[str, Callable[[], Aggregation]] = {
    "ovo_bench": _ovo_bench,
    "streamingbench": _streamingbench,
    "streambench": _streambench,
    "cogstream": _cogstream,
}


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A float column, all NaN where no record has it (e.g. a subscore)."""
    if name not in frame:
        return np.full(len(frame), np.nan)
    return frame[name].to_numpy(dtype=float, na_value=np.nan)


def _ordered(keys: Sequence[str], order: Sequence[str]) -> list[str]:
    """Known keys in the benchmark's order, then any other sorted."""
    keys = list(keys)
    return [k for k in order if k in keys] + sorted(k for k in keys if k not in order)


def _nanmean(columns: list[np.ndarray], rows: int) -> np.ndarray:
    if not columns:
        return np.full(rows, np.nan)
    stacked = np.stack(columns, axis=1)
    with np.errstate(invalid="ignore"):
        count = (~np.isnan(stacked)).sum(axis=1)
        return np.where(count > 0, np.nansum(stacked, axis=1) / np.maximum(count, 1), np.nan)
