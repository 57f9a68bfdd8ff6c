"""What each configuration spends per query, per route and in all: latency (mean, p50, p95), tokens, frames,
calls, dollars and the S2 share. Error records answered nothing and are left out of the per-query figures
(their count is stated); dollars are summed over every record."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import axes as axes_
from analysis.causes import ERRORS
from analysis.load import Run
from analysis.results import natural_key
from analysis.tables import Cell, Column, Row, Table

ROUTES = ("S1", "S2", "all")


def efficiency_table(run: Run, caption: str = "", label: str = "") -> Table:
    records = run.records
    answered = records[~records["cause"].isin(ERRORS)]
    columns = [
        ("n", "n", None, 0),
        ("lat mean s", "latency_s", "low", 3),
        ("lat p50 s", "latency_p50", "low", 3),
        ("lat p95 s", "latency_p95", "low", 3),
    ]
    if records["modelled_latency_s"].notna().any():
        columns.append(("model lat s", "modelled_latency_s", "low", 3))
    if records["ttft_s"].notna().any():
        columns.append(("TTFT s", "ttft_s", "low", 3))
    columns += [
        ("tok in", "tokens_in", None, 0),
        ("tok out", "tokens_out", None, 1),
        ("visual tok", "visual_tokens", None, 0),
        ("frames", "n_frames", None, 1),
        ("calls", "n_calls", None, 2),
        ("$ total", "cost_total", "low", 4),
        ("$/query", "cost_usd", "low", 5),
        ("S2 %", "s2_share", None, 1),
    ]
    if "cached_calls" in records:
        columns.append(("cached %", "cached_share", None, 1))
    stats = {route: _stats(answered, records, route) for route in ROUTES}
    labels = run.labels()
    rows = []
    jobs = sorted(run.jobs, key=lambda j: natural_key(tuple(labels.loc[j])))
    for job in jobs:
        routes = [r for r in ROUTES[:-1] if job in stats[r].index]
        for route in [*routes, "all"] if len(routes) > 1 else ["all"]:  # one route: its row is the job's row
            if job not in stats[route].index:
                continue
            line = stats[route].loc[job]
            cells = tuple(Cell(_value(line, field)) for _, field, _, _ in columns)
            rows.append(Row((*labels.loc[job], route), cells, block=route, section=job))
    errors = int(records["cause"].isin(ERRORS).sum())
    notes = (
        "Per query, over answered queries (wall-clock latency of all the query's calls; tokens and frames of the "
        f"answering call(s)); {errors} error records left out of them. $ total: every record. S2 %: share of "
        "routed queries answered by S2. Route rows appear where a configuration used both routes. Lowest latency "
        "and cost per column and route bold, second underlined.",
    )
    stub = (*(axes_.label(a) for a in run.axes), "route") if run.axes else ("configuration", "route")
    if not run.axes:
        rows = [Row(("all", r.labels[-1]), r.cells, r.block) for r in rows]
    table_columns = tuple(Column(name, rank=rank, digits=digits) for name, _, rank, digits in columns)
    return Table(stub, table_columns, tuple(rows), caption, label, notes)


def _stats(answered: pd.DataFrame, records: pd.DataFrame, route: str) -> pd.DataFrame:
    """One row per job: means of the per-query figures, latency percentiles, cost and shares."""
    part = answered if route == "all" else answered[answered["route"] == route]
    every = records if route == "all" else records[records["route"] == route]
    grouped = part.groupby("job", observed=True)
    out = grouped[["latency_s", "modelled_latency_s", "ttft_s", "tokens_in", "tokens_out", "visual_tokens",
                   "n_frames", "n_calls", "cost_usd"]].mean()  # fmt: skip
    out["n"] = grouped.size()
    out["latency_p50"] = grouped["latency_s"].quantile(0.5)
    out["latency_p95"] = grouped["latency_s"].quantile(0.95)
    out["cost_total"] = every.groupby("job", observed=True)["cost_usd"].sum()
    if route == "all":
        routed = records[records["route"].notna()]
        out["s2_share"] = 100 * (routed["route"] == "S2").groupby(routed["job"], observed=True).mean()
    if "cached_calls" in part:
        calls = part.groupby("job", observed=True)[["cached_calls", "n_calls"]].sum()
        out["cached_share"] = 100 * calls["cached_calls"] / calls["n_calls"].replace(0, np.nan)
    return out


def _value(line: pd.Series, field: str) -> float | None:
    if field not in line.index:
        return None
    value = line[field]
    return None if pd.isna(value) else float(value)
