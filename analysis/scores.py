"""Every job's official scores, with the counts behind them: records, failures by cause, policy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd

from analysis.aggregate import Aggregation, Levels, aggregation, as_sums, sums
from analysis.causes import CAUSES, OK
from analysis.load import Run


@dataclass(frozen=True)
class JobScores:
    job: str
    dataset: str
    aggregation: Aggregation
    scores: dict[str, float]  # tasks, then categories, then "overall" (NaN where nothing counted)
    levels: dict[str, tuple[str, ...]]  # level -> its score names
    n: int  # records
    causes: dict[str, int]  # failing records by cause (causes.CAUSES order), zero counts left out

    @property
    def failed(self) -> int:
        return sum(self.causes.values())


def score_jobs(run: Run, policy: str = "official", metric: str = "official") -> dict[str, JobScores]:
    """Scores of every job that has records, by job id, in the run's job order."""
    records = run.records
    datasets = {job.id: job.dataset for job in run.jobs.values()}
    out: dict[str, JobScores] = {}
    counts = _cause_counts(records)
    sizes = records.groupby("job", observed=True).size()
    for dataset in sorted(set(datasets.values())):
        members = [j for j, d in datasets.items() if d == dataset]
        frame = records[records["job"].isin(members)]
        if frame.empty:
            continue
        agg = aggregation(dataset, adapter_tasks(dataset))
        table = sums(frame, agg, policy, metric, ["job"])
        levels = agg.combine(as_sums(table))
        for i, job in enumerate(table.index):
            out[job] = _job_scores(job, dataset, agg, levels, i, int(sizes[job]), counts.get(job, {}))
    return {j: out[j] for j in run.jobs if j in out}


def policy_note(agg: Aggregation, policy: str, causes: Counter[str], n: int) -> str:
    """One line per benchmark: what its numbers are, what happened to failures, and how many there were."""
    rule = agg.failures if policy == "official" else policy
    how = "counted as wrong" if rule == "wrong" else "excluded from the denominators"
    source = " (the official rule)" if policy == "official" else " (--failures)"
    judged = " and unreadable judgments" if policy != "official" or agg.judge_fails else ""
    shown = ", ".join(f"{causes[c]} {c}" for c in CAUSES if causes.get(c))
    failed = sum(causes.values())
    counts = f"{failed} of {n} records failed ({shown})" if failed else f"none of {n} records failed"
    return (
        f"{agg.benchmark}: {agg.unit}; {agg.rule}. Failures: errors{judged} {how}{source}; unparseable answers "
        f"scored wrong; {counts}."
    )


@cache
def adapter_tasks(dataset: str) -> tuple[str, ...]:
    """The adapter's task order where its class states one (the order summaries use)."""
    try:
        from harness.benchmarks import DATASETS

        tasks = getattr(DATASETS.implementation(dataset), "tasks", ())
    except (KeyError, ImportError):
        return ()
    return tuple(tasks) if isinstance(tasks, tuple) and all(isinstance(t, str) for t in tasks) else ()


def _job_scores(
    job: str, dataset: str, agg: Aggregation, levels: Levels, i: int, n: int, causes: dict[str, int]
) -> JobScores:
    scores = {name: float(v[i]) for name, v in levels.columns().items()}
    names = {
        "tasks": tuple(n for n, v in levels.tasks.items() if not np.isnan(v[i])),
        "categories": tuple(n for n, v in levels.categories.items() if not np.isnan(v[i])),
        "overall": ("overall",),
    }
    return JobScores(job, dataset, agg, scores, names, n, causes)


def _cause_counts(records: pd.DataFrame) -> dict[str, dict[str, int]]:
    failing = records[records["cause"] != OK]
    if failing.empty:
        return {}
    table = failing.groupby(["job", "cause"], observed=True).size()
    out: dict[str, dict[str, int]] = {}
    for (job, cause), count in table.items():
        out.setdefault(str(job), {})[str(cause)] = int(count)
    order = {c: i for i, c in enumerate(CAUSES)}
    return {job: dict(sorted(c.items(), key=lambda kv: order.get(kv[0], len(order)))) for job, c in out.items()}
