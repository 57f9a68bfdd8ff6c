"""Ablation along one axis: each value against a baseline, within every combination of the other axes.

A row per axis value shows its official scores (as the main table does) and, for each variant, the difference
from the baseline on the videos both configurations answered, with a 95% bootstrap interval clustered by video
and the p-value of a paired permutation test over videos (analysis.resample states both procedures).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis import axes as axes_
from analysis.aggregate import Aggregation, aggregation, sums
from analysis.load import Run
from analysis.resample import Comparison, compare
from analysis.results import DAGGER, LEVELS, check_complete, natural_key
from analysis.scores import adapter_tasks, policy_note, score_jobs
from analysis.tables import Cell, Column, Row, Table


def ablation_table(
    run: Run,
    axis: str,
    baseline: str | None = None,
    levels: Sequence[str] = ("overall",),
    metric: str = "official",
    policy: str = "official",
    resamples: int = 2000,
    permutations: int = 5000,
    seed: int = 0,
    allow_incomplete: bool = False,
    caption: str = "",
    label: str = "",
) -> Table:
    if unknown := [level for level in levels if level not in LEVELS]:
        raise ValueError(f"levels {unknown}: choose from {', '.join(LEVELS)}")
    key = axes_.resolve(axis, run.axes)
    context = [a for a in run.axes if a != key]
    labels = run.labels()
    values = sorted({labels.loc[j, key] for j in run.jobs}, key=lambda v: natural_key((v,)))
    if baseline is None:
        baseline = values[0]
    elif baseline not in values:
        raise ValueError(f"--baseline {baseline!r} is not a value of {axes_.label(key)}: {', '.join(values)}")
    scored = score_jobs(run, policy, metric)
    incomplete, _ = check_complete(run, allow_incomplete, list(scored))
    per_video = _per_video(run, policy, metric)

    blocks: dict[tuple[str, ...], dict[str, str]] = {}  # context -> axis value -> job
    for job in scored:
        ctx = tuple(labels.loc[job, a] for a in context)
        blocks.setdefault(ctx, {})[labels.loc[job, key]] = job
    names: list[str] = []
    for job in scored.values():
        for level in levels:
            names += [n for n in job.levels[level] if n not in names]
    rows, compared = [], 0
    videos: Counter[int] = Counter()
    for ctx in sorted(blocks, key=natural_key):
        members = blocks[ctx]
        base_job = members.get(baseline)
        for value in sorted(members, key=lambda v: natural_key((v,))):
            job = members[value]
            result = None
            if base_job is not None and job != base_job:
                result = _compare(per_video, base_job, job, levels, resamples, permutations, seed)
                compared += 1
                videos[result.videos] += 1
            rows.append(_row(ctx, value, scored[job], names, result, job == base_job, job in incomplete))
    if compared == 0:
        raise ValueError(f"no configuration has the baseline {axes_.label(key)}={baseline} beside it to compare with")
    columns = []
    for name in names:
        columns += [Column(name, rank="high"), Column(f"Δ {name}"), Column(f"p {name}", digits=3)]
    notes = _notes(scored, key, baseline, policy, resamples, permutations, seed, videos, bool(incomplete))
    stub = (*(axes_.label(a) for a in context), axes_.label(key))
    return Table(stub, tuple(columns), tuple(rows), caption, label, notes)


def _per_video(run: Run, policy: str, metric: str) -> dict[str, tuple[Aggregation, pd.DataFrame]]:
    """Per job: its aggregation and its per-video sums (rows: sample ids)."""
    out = {}
    records = run.records
    for dataset in sorted({j.dataset for j in run.jobs.values()}):
        members = [j.id for j in run.jobs.values() if j.dataset == dataset]
        frame = records[records["job"].isin(members)]
        if frame.empty:
            continue
        agg = aggregation(dataset, adapter_tasks(dataset))
        table = sums(frame, agg, policy, metric, ["job", "sample_id"])
        for job, part in table.groupby(level="job", observed=True):
            out[str(job)] = (agg, part.droplevel("job"))
    return out


def _compare(
    per_video: dict[str, tuple[Aggregation, pd.DataFrame]],
    base_job: str,
    job: str,
    levels: Sequence[str],
    resamples: int,
    permutations: int,
    seed: int,
) -> Comparison:
    agg, base = per_video[base_job]
    _, variant = per_video[job]
    shared = base.index.intersection(variant.index)
    keys = sorted(set(base["count"].columns) | set(variant["count"].columns))

    def arrays(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        part = table.loc[shared]
        value = part["value"].reindex(columns=keys, fill_value=0.0).to_numpy(float)
        count = part["count"].reindex(columns=keys, fill_value=0.0).to_numpy(float)
        return value, count

    def statistic(value: np.ndarray, count: np.ndarray) -> dict[str, np.ndarray]:
        from analysis.aggregate import Sums

        return agg.combine(Sums(tuple(keys), value, count)).columns(levels)

    return compare(arrays(base), arrays(variant), statistic, resamples, permutations, seed)


def _row(ctx, value, scores, names, result: Comparison | None, is_base: bool, incomplete: bool) -> Row:
    cells = []
    mark = DAGGER if incomplete else ""
    for name in names:
        score = scores.scores.get(name)
        cells.append(Cell(score, mark=mark if score is not None else ""))
        if is_base:
            cells += [Cell(text="baseline"), Cell(text="-")]
        elif result is None or name not in result.delta or np.isnan(result.delta[name]):
            cells += [Cell(text="-"), Cell(text="-")]
        else:
            d, lo, hi, p = result.delta[name], result.low[name], result.high[name], result.p[name]
            cells.append(Cell(d, text=f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"))
            cells.append(Cell(p, text="<0.001" if p < 0.001 else f"{p:.3f}"))
    return Row((*ctx, value), tuple(cells), block=" ".join(ctx), section=" ".join(ctx))


def _notes(scored, key, baseline, policy, resamples, permutations, seed, videos, incomplete) -> tuple[str, ...]:
    by_dataset: dict[str, list] = {}
    for s in scored.values():
        by_dataset.setdefault(s.dataset, []).append(s)
    notes = []
    for members in by_dataset.values():
        causes: Counter[str] = Counter()
        for m in members:
            causes.update(m.causes)
        notes.append(policy_note(members[0].aggregation, policy, causes, sum(m.n for m in members)))
    shown = ", ".join(str(v) for v in sorted(videos))
    notes.append(
        f"Δ: score minus the baseline's ({axes_.label(key)}={baseline}) on the videos both answered ({shown} "
        f"videos per comparison), in points; [95% CI]: percentile bootstrap over videos ({resamples} resamples, "
        f"seed {seed}; all draws when there are fewer); p: two-sided paired permutation test over videos (the two "
        f"configurations' results swapped within each video, {permutations} draws; all patterns when fewer), not "
        "corrected for multiple comparisons. Best score per column and block bold, second underlined."
    )
    if incomplete:
        notes.append(f"{DAGGER} incomplete: not every shard of the job is done.")
    return tuple(notes)
