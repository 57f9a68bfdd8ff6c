"""What a run holds against what its sweep planned: per cell of the axes and per shard, done / partial (n of
N) / failed (by cause) / missing, with the command that resumes each incomplete cell.

N comes from the dataset itself (rebuilt from the job's config.yaml, as `export` does, minus the items the
job's manifest lists as skipped), split into shards by the runner's own rule. The planned jobs come from the
sweep's multirun.yaml (its overrides and sweeper params, expanded as the basic sweeper expands them), so a
job that never started still shows as a missing cell; its axis values come from composing its config.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis import axes as axes_
from analysis import tables
from analysis.causes import ERRORS, error_cause
from analysis.load import Job, Run

STATES = ("done", "partial", "failed", "missing")
SHARD_FILE = re.compile(r"shard-(\d{4})-of-(\d{4})\.(jsonl|done)$")
CONF = Path(__file__).resolve().parents[1] / "conf"


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    planned: int | None
    recorded: int
    errors: dict[str, int]
    marker: bool  # the .done file the runner writes when the shard's streams all ended

    @property
    def state(self) -> str:
        if self.planned is None:
            return ("failed" if self.errors else "done") if self.marker else "partial" if self.recorded else "missing"
        if self.recorded >= self.planned:
            return "failed" if self.errors else "done"
        return "partial" if self.recorded else "missing"

    def text(self) -> str:
        n = f"{self.recorded} of {self.planned}" if self.planned is not None else f"{self.recorded} recorded"
        errors = ", ".join(f"{v} {k}" for k, v in self.errors.items())
        killed = "" if self.marker or self.state == "done" else ", no .done marker"
        return f"shard {self.index} of {self.count}: {self.state} ({n}{', ' + errors if errors else ''}{killed})"


@dataclass(frozen=True)
class Cell:
    labels: dict[str, str]  # axis -> value
    job: str | None  # job id; None for a planned job that has no folder
    state: str
    planned: int | None
    recorded: int
    errors: dict[str, int]  # error records (and a failed job) by cause
    shards: tuple[Shard, ...] = ()
    notes: tuple[str, ...] = ()
    command: str | None = None  # resumes this cell

    def text(self) -> str:
        if self.state == "missing":
            return "missing"
        n = f"{self.recorded}/{self.planned}" if self.planned is not None else f"{self.recorded}/?"
        errors = ", ".join(f"{v} {k}" for k, v in self.errors.items())
        return f"{self.state} {n}" + (f" ({errors})" if errors else "")


@dataclass(frozen=True)
class Report:
    root: Path
    axes: list[str]
    cells: list[Cell]
    sweep_command: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(c.state == "done" for c in self.cells)

    def counts(self) -> Counter[str]:
        return Counter(c.state for c in self.cells)


def check(run: Run) -> Report:
    """The completeness report of a loaded run (one root)."""
    root = run.roots[0]
    recorded = _recorded(run)
    planned_jobs = planned_overrides(root)
    present = {frozenset(job_overrides(job)): job for job in run.jobs.values() if job_overrides(job)}
    missing = [o for o in planned_jobs if frozenset(o) not in present]
    missing_configs = [_compose(o) for o in missing]
    configs = {job.id: job.config for job in run.jobs.values()}
    configs.update({f"missing:{i}": c for i, c in enumerate(missing_configs) if c is not None})
    axes = axes_.detect(configs)
    notes: list[str] = []
    cells = [_job_cell(job, recorded.get(job.id, {}), axes, root, notes) for job in run.jobs.values()]
    for i, overrides in enumerate(missing):
        config = missing_configs[i] or {}
        labels = {a: axes_.value_text(config.get(a)) if config else "?" for a in axes}
        note = () if config else (f"overrides: {' '.join(overrides)}",)
        cells.append(Cell(labels, None, "missing", None, 0, {}, (), note, resume_command(overrides, root)))
    cells.sort(key=lambda c: tuple(c.labels.get(a, "") for a in axes))
    return Report(root, axes, cells, _sweep_command(root), notes)


def marker_incomplete(run: Run) -> tuple[list[str], int]:
    """Cheap check for tables: jobs whose shards are not all marked done, and planned jobs with no folder."""
    incomplete = [job.id for job in run.jobs.values() if not _all_marked(job.path)]
    planned = 0
    for root in run.roots:
        present = {frozenset(job_overrides(j)) for j in run.jobs.values() if j.path.is_relative_to(root)}
        planned += sum(frozenset(o) not in present for o in planned_overrides(root))
    return incomplete, planned


def planned_overrides(root: Path) -> list[list[str]]:
    """The override list of every cell of the sweep recorded in root/multirun.yaml (empty when there is none).
    A cell is a job folder: jobs of one shard each (`shard.index` swept) write into their cell's folder."""
    path = root / "multirun.yaml"
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    hydra = config.get("hydra") or {}
    params = (hydra.get("sweeper") or {}).get("params") or {}
    task = ((hydra.get("overrides") or {}).get("task")) or []
    from harness.sweep import expand_sweep

    cells: dict[tuple[str, ...], list[str]] = {}
    for job in expand_sweep(params, task):
        cell = _cell(job)
        cells.setdefault(tuple(cell), cell)
    return list(cells.values())


def _cell(overrides: Sequence[str]) -> list[str]:
    """The overrides without the shard selection (a cell resumes all its shards; recorded queries are kept)."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "shard.index"]


def resume_command(overrides: Sequence[str], root: Path, retry_errors: bool = False) -> str:
    """The run_sweep.py command that continues one job in its own folder (records kept, only the rest asked).
    run.name and run.output_root are those of the folder analysed (it may have been moved or renamed)."""
    args = [o for o in overrides if o.split("=", 1)[0] not in ("run.name", "run.output_root", "run.retry_errors")]
    keys = {o.split("=", 1)[0].lstrip("+~") for o in args}
    args.append(f"run.name={root.name}")
    if root.parent.resolve() != (Path.cwd() / "outputs").resolve():
        args.append(f"run.output_root={root.parent}")
    if "experiment" in keys:  # an experiment may set MULTIRUN: run this one job only
        args.append("hydra.mode=RUN")
    if retry_errors:
        args.append("run.retry_errors=true")
    return "python run_sweep.py " + " ".join(shlex.quote(a) for a in args)


def render(report: Report) -> str:
    """The matrix (rows: every axis but the last; columns: the last axis), then each incomplete cell in full."""
    axes = report.axes
    rows_axes, col_axis = (axes[:-1], axes[-1]) if len(axes) > 1 else (axes, None)
    columns = sorted({c.labels[col_axis] for c in report.cells}) if col_axis else ["state"]
    by_row: dict[tuple[str, ...], dict[str, str]] = {}
    for cell in report.cells:
        key = tuple(cell.labels[a] for a in rows_axes) or ("all",)
        by_row.setdefault(key, {})[cell.labels[col_axis] if col_axis else "state"] = cell.text()
    table = tables.Table(
        tuple(axes_.label(a) for a in rows_axes) or ("job",),
        tuple(tables.Column(c, numeric=False) for c in columns),
        tuple(tables.Row(k, tuple(tables.Cell(text=v.get(c, "-")) for c in columns)) for k, v in by_row.items()),
    )
    counts = report.counts()
    head = f"Completeness of {report.root}: {len(report.cells)} cells"
    head += f" ({' x '.join(axes_.label(a) for a in axes)})" if axes else ""
    head += ": " + ", ".join(f"{counts[s]} {s}" for s in STATES)
    if col_axis:
        head += f"\nColumns: {axes_.label(col_axis)}"
    out = [head, "", tables.markdown(table).rstrip("\n")]
    incomplete = [c for c in report.cells if c.state != "done"]
    if incomplete:
        out += ["", "Incomplete cells:"]
    for cell in incomplete:
        where = " ".join(f"{axes_.label(a)}={v}" for a, v in cell.labels.items()) or (cell.job or "the job")
        out.append(f"- {where}: {cell.text()}")
        out += [f"    {s.text()}" for s in cell.shards if s.state != "done"]
        out += [f"    note: {n}" for n in cell.notes]
        if cell.command:
            out.append(f"    resume: {cell.command}")
    if incomplete and report.sweep_command:
        out += ["", f"Or resume every cell at once (finished queries are never asked again):\n  {report.sweep_command}"]
    out += [f"note: {n}" for n in report.notes]
    return "\n".join(out) + "\n"


def as_json(report: Report) -> str:
    cells = []
    for c in report.cells:
        shards = [{"index": s.index, "count": s.count, "state": s.state, "planned": s.planned,
                   "recorded": s.recorded, "errors": s.errors, "marker": s.marker} for s in c.shards]  # fmt: skip
        cells.append({"labels": c.labels, "job": c.job, "state": c.state, "planned": c.planned,
                      "recorded": c.recorded, "errors": c.errors, "shards": shards, "notes": list(c.notes),
                      "command": c.command})  # fmt: skip
    out = {"root": str(report.root), "axes": report.axes, "complete": report.complete, "cells": cells,
           "sweep_command": report.sweep_command, "notes": report.notes}  # fmt: skip
    return json.dumps(out, indent=1)


# ---- one job


def _job_cell(job: Job, recorded: dict[str, Any], axes: list[str], root: Path, notes: list[str]) -> Cell:
    labels = {a: axes_.value_text(job.config.get(a)) for a in axes}
    count = shard_count(job.path)
    planned, reason = _planned_queries(job, count)
    if reason:
        notes.append(f"{job.id}: N unknown ({reason}); shards judged by their .done markers")
    query_shard: dict[str, int] = recorded.get("shards", {})
    errors_by_query: dict[str, str] = recorded.get("errors", {})
    markers = {i for i, c in _shard_files(job.path, ".done") if c == count}
    shards = []
    for index in range(count):
        wanted = None if planned is None else planned.get(index, set())
        mine = {q for q, s in query_shard.items() if s == index}
        got = mine if wanted is None else mine & wanted
        errors = Counter(errors_by_query[q] for q in got if q in errors_by_query)
        shards.append(Shard(index, count, None if wanted is None else len(wanted), len(got), _ordered(errors),
                            index in markers))  # fmt: skip
    total = None if planned is None else sum(len(v) for v in planned.values())
    n = sum(s.recorded for s in shards)
    errors: Counter[str] = Counter()
    for s in shards:
        errors.update(s.errors)
    cell_notes = []
    if planned is not None and (extra := len(query_shard) - n) > 0:
        cell_notes.append(f"{extra} records of queries the dataset no longer has (not counted)")
    status = job.status.get("status")
    if status == "failed":
        text = str(job.status.get("error", ""))
        cell_notes.append(f"the job failed: {text}")
        if not n:  # nothing recorded: the job's own error is the cell's cause
            errors[error_cause(text)] += 1
    elif status == "running":
        cell_notes.append(f"status.json says running (host {job.status.get('host')}, pid {job.status.get('pid')})")
    budget = _budget_stop(job.manifest)
    if budget:
        cell_notes.append(budget)
        errors["budget_stop"] += (total - n) if total is not None else 0
    state = _cell_state(shards, total, n, status, errors)
    retry = state == "failed" and n and (total is None or n >= total)
    command = None if state == "done" else resume_command(job_overrides(job), root, retry_errors=bool(retry))
    if state != "done" and not job_overrides(job):
        command = None
        cell_notes.append("no status.json or .hydra/overrides.yaml: rerun the command that made this job")
    return Cell(labels, job.id, state, total, n, _ordered(errors), tuple(shards), tuple(cell_notes), command)


def _cell_state(shards: list[Shard], total: int | None, n: int, status: Any, errors: Counter[str]) -> str:
    if total is None:
        states = {s.state for s in shards}
        if states <= {"done", "failed"}:
            return "failed" if "failed" in states or +errors else "done"
        return "partial" if n else "failed" if status == "failed" else "missing"
    if n >= total:
        return "failed" if +errors else "done"
    if n:
        return "partial"
    return "failed" if status == "failed" else "missing"


def _recorded(run: Run) -> dict[str, dict[str, Any]]:
    """Per job: the shard of each recorded query (by the runner's rule) and the error cause of error records."""
    from harness.runner.plan import shard_of

    frame = run.records[["job", "sample_id", "query_id", "cause"]]
    out: dict[str, dict[str, Any]] = {}
    for job_id, part in frame.groupby("job", observed=True):
        count = shard_count(run.jobs[str(job_id)].path)
        samples = {s: shard_of(str(s), count) for s in part["sample_id"].unique()}
        queries = part["query_id"].astype(str).to_numpy()
        shard = part["sample_id"].map(samples).to_numpy()
        cause = part["cause"].astype(str).to_numpy()
        out[str(job_id)] = {
            "shards": dict(zip(queries, shard.tolist(), strict=True)),
            "errors": {q: c for q, c in zip(queries, cause, strict=True) if c in ERRORS},
        }
    return out


_DATASETS: dict[str, Any] = {}


def _planned_queries(job: Job, count: int) -> tuple[dict[int, set[str]] | None, str]:
    """Query ids per shard, from the dataset the job ran (None and the reason when it cannot be loaded)."""
    try:
        node = (yaml.safe_load((job.path / "config.yaml").read_text()) or {}).get("dataset")
        key = json.dumps(node, sort_keys=True)
        if key not in _DATASETS:
            from harness.benchmarks import DATASETS

            _DATASETS[key] = [(s.id, [q.id for q in s.queries]) for s in DATASETS.build(DATASETS.parse(node)).load()]
        samples = _DATASETS[key]
    except Exception as e:  # any failure to rebuild the dataset is reported, and the markers decide
        return None, f"cannot load dataset {job.dataset!r}: {type(e).__name__}: {str(e)[:200]}"
    from harness.runner.plan import shard_of

    skipped = job.manifest.get("skipped") or []
    bad_samples = {s["sample"] for s in skipped if isinstance(s, dict) and not s.get("query")}
    bad_queries = {s["query"] for s in skipped if isinstance(s, dict) and s.get("query")}
    out: dict[int, set[str]] = {i: set() for i in range(count)}
    for sample_id, queries in samples:
        if sample_id not in bad_samples:
            out[shard_of(sample_id, count)].update(q for q in queries if q not in bad_queries)
    return out, ""


def shard_count(job_dir: Path) -> int:
    """The job's shard count: from its newest shard file's name, else its saved Hydra config, else 1."""
    files = sorted((job_dir / "shards").glob("shard-*"), key=lambda p: p.stat().st_mtime_ns)
    for path in reversed(files):
        if match := SHARD_FILE.search(path.name):
            return int(match.group(2))
    try:
        saved = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text()) or {}
        return int(saved["shard"]["count"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return 1


def _shard_files(job_dir: Path, suffix: str) -> list[tuple[int, int]]:
    out = []
    for path in (job_dir / "shards").glob(f"shard-*{suffix}"):
        if match := SHARD_FILE.search(path.name):
            out.append((int(match.group(1)), int(match.group(2))))
    return out


def _all_marked(job_dir: Path) -> bool:
    """Whether every shard of some shard count has its .done marker (what the runner writes at the end)."""
    done: dict[int, set[int]] = {}
    for index, count in _shard_files(job_dir, ".done"):
        done.setdefault(count, set()).add(index)
    return any(len(indices) == count for count, indices in done.items())


def job_overrides(job: Job) -> list[str]:
    """The overrides that made the job's cell (the shard selection left out)."""
    overrides = job.status.get("overrides")
    if isinstance(overrides, list):
        return _cell([str(o) for o in overrides])
    try:
        saved = yaml.safe_load((job.path / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return _cell([str(o) for o in saved]) if isinstance(saved, list) else []


def _compose(overrides: list[str]) -> dict[str, Any] | None:
    """The flat config a planned job would get (None when it cannot be composed here)."""
    try:
        from hydra import compose, initialize_config_dir

        from harness.config import load_job, register

        register()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[o for o in overrides if not o.startswith("hydra.")])
        return axes_.flatten(load_job(cfg)[0].semantic())
    except Exception:  # a planned job whose config no longer composes is still listed, by its overrides
        return None


def _budget_stop(manifest: dict[str, Any]) -> str:
    """The budget stop the runner recorded in manifest.json (`budget_reached`), as a sentence; "" when none."""
    note = manifest.get("budget_reached")
    if not note:
        return ""
    if not isinstance(note, dict):
        return str(note)
    return (
        f"run.budget_usd={note.get('budget_usd')} reached (${note.get('spent_usd_total')} spent in all, "
        f"{note.get('unasked')} queries not asked); resume with a larger run.budget_usd"
    )


def _sweep_command(root: Path) -> str | None:
    """The sweep's own command line (.jobs/plan.json), aimed at the folder analysed."""
    try:
        argv = json.loads((root / ".jobs" / "plan.json").read_text())["argv"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    command = resume_command([str(a) for a in argv[1:]], root)
    return command.replace(" hydra.mode=RUN", "")  # the whole sweep stays a multirun


def _ordered(errors: Counter[str]) -> dict[str, int]:
    return {cause: errors[cause] for cause in ERRORS if errors.get(cause)}
