"""A job's numbers from its records: accuracy per task family and overall, S2 share, latency.

Policy, stated in every summary: an error record counts as wrong (score 0) and is counted; so does an
answer whose LLM judgments all failed (counted apart). Overall is the unweighted mean of the family
accuracies, so a large family does not dominate. Where records carry a `robust` subscore (a stricter
answer parser), its accuracy is kept beside the official one and shown under `scoring=robust`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from statistics import fmean
from typing import Any

from harness.records import ResultRecord

ERROR_POLICY = "errors count as wrong"


def summarize(records: Iterable[ResultRecord], tasks: Sequence[str]) -> dict[str, Any]:
    records = list(records)
    per_task: dict[str, dict[str, Any]] = {}
    for task in list(tasks) + sorted({r.task for r in records} - set(tasks)):
        mine = [r for r in records if r.task == task]
        if mine:
            per_task[task] = {
                "n": len(mine),
                "errors": sum(r.has_error for r in mine),
                "accuracy": 100.0 * fmean(r.score or 0.0 for r in mine),
            }
            if any("robust" in r.subscores for r in mine):
                per_task[task]["robust"] = 100.0 * fmean(r.subscores.get("robust", 0.0) for r in mine)
    robust = [t["robust"] for t in per_task.values() if "robust" in t]
    routed = [r for r in records if r.route is not None]
    modelled = [r.modelled_latency_s for r in records if r.modelled_latency_s is not None]
    return {
        "n": len(records),
        "errors": sum(r.has_error for r in records),
        "error_policy": ERROR_POLICY,
        "tasks": per_task,
        "overall": fmean(t["accuracy"] for t in per_task.values()) if per_task else None,
        "overall_robust": fmean(robust) if robust else None,
        "judge_failed": sum(bool(r.judge_failed) for r in records),  # answers with an unreadable judgment
        "s2_share": 100.0 * fmean(r.route == "S2" for r in routed) if routed else None,
        "latency_s": fmean(r.latency_s for r in records) if records else None,
        "modelled_latency_s": fmean(modelled) if modelled else None,
        "model_calls": sum(r.n_calls for r in records),
        "cached_calls": sum(r.cached_calls for r in records),  # served from the response cache, not paid again
        "cost_usd": sum(r.cost_usd for r in records),  # at the configured list prices, cached calls included
    }


def table_row(
    name: str, status: str, summary: dict[str, Any] | None, tasks: Sequence[str], robust: bool = False
) -> list[str]:
    """One row of a results table: name, status, a column per family, overall (and robust), S2 %, latencies, n."""
    if summary is None:
        return [name, status] + ["-"] * (len(tasks) + 5 + robust)
    cells = [_pct(summary["tasks"].get(t, {}).get("accuracy")) for t in tasks]
    failed = summary.get("judge_failed", 0)
    return [
        name,
        status,
        *cells,
        _pct(summary["overall"]),
        *([_pct(summary.get("overall_robust"))] if robust else []),
        _pct(summary["s2_share"]),
        _num(summary["modelled_latency_s"]),
        _num(summary["latency_s"], 4),
        f"{summary['n']} ({summary['errors']} err" + (f", {failed} judge failed)" if failed else ")"),
    ]


def table_headers(tasks: Sequence[str], robust: bool = False) -> list[str]:
    extra = ["overall robust"] if robust else []
    return ["job", "status", *tasks, "overall", *extra, "S2 %", "lat model s", "lat wall s", "n"]


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
