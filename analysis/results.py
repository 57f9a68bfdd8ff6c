"""The main results table: one row per configuration, columns per task, category and overall (each benchmark's
official aggregation), with the records (`n`) and failures (`fail`) behind every cell.

Rows and column groups are axis values (config keys that differ between jobs); by default the dataset spreads
over column groups and every other axis makes the rows. A table refuses jobs whose shards are not all done,
and planned jobs with no records, unless incomplete cells are allowed; then they are marked with a dagger.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from analysis import axes as axes_
from analysis import completeness
from analysis.load import Run
from analysis.scores import JobScores, policy_note, score_jobs
from analysis.tables import Cell, Column, Row, Table

LEVELS = ("tasks", "categories", "overall")
DAGGER = "†"


class Incomplete(ValueError):
    """A table would show cells with missing records; the message lists them and what to do."""


@dataclass(frozen=True)
class Layout:
    rows: list[str]
    cols: list[str]


def layout(run: Run, rows: Sequence[str] | None, cols: Sequence[str] | None) -> Layout:
    """Row and column axes: given ones resolved (`router` -> router.name); by default the dataset spreads over
    columns and every other axis makes the rows."""
    chosen_cols = [axes_.resolve(a, run.axes) for a in cols] if cols is not None else None
    chosen_rows = [axes_.resolve(a, run.axes) for a in rows] if rows is not None else None
    if chosen_cols is None:
        chosen_cols = [a for a in run.axes if a == "dataset.name" and a not in (chosen_rows or [])]
    if chosen_rows is None:
        chosen_rows = [a for a in run.axes if a not in chosen_cols]
    return Layout(chosen_rows, chosen_cols)


def check_complete(run: Run, allow_incomplete: bool, jobs: Sequence[str] | None = None) -> tuple[set[str], int]:
    """Job ids to mark incomplete, and how many planned jobs have no folder; raises Incomplete when there are
    any and they are not allowed."""
    incomplete, missing = completeness.marker_incomplete(run)
    marked = {j for j in incomplete if jobs is None or j in jobs}
    if (marked or missing) and not allow_incomplete:
        lines = [f"  {j}" for j in sorted(marked)]
        if missing:
            lines.append(f"  {missing} planned job(s) of the sweep have no folder yet")
        roots = " ".join(str(r) for r in run.roots)
        raise Incomplete(
            "cells with missing records (shards not all done):\n" + "\n".join(lines) + "\nFinish them (`python -m "
            f"analysis completeness {roots}` prints the commands) or pass --allow-incomplete to mark them "
            f"with {DAGGER}"
        )
    return marked, missing


def results_table(
    run: Run,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    levels: Sequence[str] = LEVELS,
    metric: str = "official",
    policy: str = "official",
    allow_incomplete: bool = False,
    caption: str = "",
    label: str = "",
) -> Table:
    unknown = [level for level in levels if level not in LEVELS]
    if unknown:
        raise ValueError(f"levels {unknown}: choose from {', '.join(LEVELS)}")
    shape = layout(run, rows, cols)
    scored = score_jobs(run, policy, metric)
    incomplete, missing = check_complete(run, allow_incomplete)
    labels = run.labels(shape.rows + shape.cols)
    groups: dict[tuple[str, ...], list[str]] = {}  # column group -> score names, in first-seen order
    cells: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}  # (row, group) -> job
    for job in run.jobs:
        row = tuple(labels.loc[job, a] for a in shape.rows)
        group = tuple(labels.loc[job, a] for a in shape.cols)
        if (row, group) in cells:
            raise ValueError(
                f"jobs {cells[(row, group)]} and {job} fall in the same cell; put the axis that tells them apart in "
                f"--rows or --cols (axes: {', '.join(axes_.label(a) for a in run.axes)})"
            )
        cells[(row, group)] = job
        names = groups.setdefault(group, [])
        if job in scored:
            for level in levels:
                names.extend(n for n in scored[job].levels[level] if n not in names)
    ordered_groups = sorted(groups, key=natural_key)
    columns = []
    for group in ordered_groups:
        name = " ".join(group)
        columns += [Column(n, name, rank="high") for n in groups[group]]
        columns += [Column("n", name, digits=0), Column("fail", name, digits=0)]
    table_rows = []
    for row in sorted({r for r, _ in cells}, key=natural_key):
        out = []
        for group in ordered_groups:
            job = cells.get((row, group))
            job_scores = scored.get(job) if job is not None else None
            mark = DAGGER if job in incomplete else ""
            for name in groups[group]:
                value = None if job_scores is None else job_scores.scores.get(name)
                out.append(Cell(value, mark=mark if value is not None else ""))
            n = 0.0 if job is not None and job_scores is None else None if job is None else float(job_scores.n)
            out.append(Cell(n, mark=mark if job_scores is None else ""))  # a job without records: n = 0, marked
            out.append(Cell(None if job_scores is None else float(job_scores.failed)))
        table_rows.append(Row(row, tuple(out)))
    notes = _notes(scored, policy, metric, bool(incomplete), missing)
    stub = tuple(axes_.label(a) for a in shape.rows) or ("configuration",)
    rows_out = tuple(table_rows) if shape.rows else tuple(Row(("all",), r.cells) for r in table_rows)
    return Table(stub, tuple(columns), rows_out, caption, label, notes)


def _notes(scored: dict[str, JobScores], policy: str, metric: str, incomplete: bool, missing: int) -> tuple[str, ...]:
    by_benchmark: dict[str, list[JobScores]] = {}
    for scores in scored.values():
        by_benchmark.setdefault(scores.dataset, []).append(scores)
    notes = []
    for members in by_benchmark.values():
        causes: Counter[str] = Counter()
        for m in members:
            causes.update(m.causes)
        notes.append(policy_note(members[0].aggregation, policy, causes, sum(m.n for m in members)))
    if metric == "robust":
        notes.append("Metric: robust (the stricter answer parser); tasks without one keep their official score.")
    notes.append("n: records of the cell; fail: records that failed (any cause). Best per column bold, second "
                 "underlined.")  # fmt: skip
    if incomplete:
        notes.append(f"{DAGGER} incomplete: not every shard of the job is done.")
    if missing:
        notes.append(f"{missing} planned job(s) of the sweep have no folder and no row.")
    return tuple(notes)


def natural_key(key: tuple[str, ...]) -> tuple[tuple[int, float, str], ...]:
    """Numbers sort as numbers ("8" before "16"), "-" (unset) first, text alphabetically."""
    out = []
    for part in key:
        try:
            out.append((1, float(part), ""))
        except ValueError:
            out.append((0 if part == "-" else 2, 0.0, part))
    return tuple(out)
