"""Where a sweep stands, from its folder alone: every planned job (the plans the ledger writes at each multirun,
harness/sweep.py) crossed with what is on disk, per cell and shard: done (the shard's .done marker), running (its
job's heartbeat is fresh), stale (the heartbeat stopped, or the job's process on this host is gone), failed (the
job's error), missing (never started, or ended early). And the command that finishes the sweep: only the
unfinished cells and shards, on the same launcher profile; resume makes running it twice safe.

Reads only small files (plans, status files, markers): cheap on a sweep of thousands of jobs. Error records
inside finished shards (a query whose call failed) are counted by `python -m analysis completeness`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from analysis.summary import markdown
from harness.errors import DataError
from harness.runner import lock
from harness.runner.store import shard_stem
from harness.sweep import HEARTBEAT_S, PLANS, status_files

STATES = ("done", "running", "stale", "failed", "missing")
UNFINISHED = ("stale", "failed", "missing")  # what the finishing command runs again
STALE_BEATS = 4  # a job is stale after this many heartbeats missed (unless --stale-after says otherwise)
SHARD = "shard.index"


@dataclass(frozen=True)
class ShardState:
    index: int
    state: str  # one of STATES
    detail: str = ""  # the error's first line, the heartbeat's age, where the job runs


@dataclass(frozen=True)
class Cell:
    """One configuration of the sweep: its folder, how it was planned, and the state of each planned shard."""

    dir: str  # relative to the sweep folder
    overrides: tuple[str, ...]  # the job's command-line overrides, without shard.index
    hydra_overrides: tuple[str, ...]  # hydra.* overrides of the command that planned it (launcher settings)
    count: int  # shard.count
    whole: bool  # planned as one job for all its shards (else one job per shard)
    shards: tuple[ShardState, ...]

    @property
    def done(self) -> bool:
        return all(s.state == "done" for s in self.shards)


@dataclass(frozen=True)
class Report:
    root: Path
    cells: list[Cell]
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.cells) and all(c.done for c in self.cells)

    def counts(self) -> dict[str, int]:
        shards = [s.state for c in self.cells for s in c.shards]
        return {state: shards.count(state) for state in STATES}


def check(root: Path, stale_after_s: float | None = None, now: float | None = None) -> Report:
    """The state of every planned cell and shard of the sweep folder `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such sweep folder (expected outputs/<run.name>/)")
    now = time.time() if now is None else now
    plans = _plans(root)
    notes = [] if (root / PLANS).is_dir() else [f"no plan in {root / PLANS}: only jobs that started are shown"]
    cells = [_cell(root, d, p, now, stale_after_s) for d, p in sorted(plans.items())]
    return Report(root, cells, notes)


def finish_command(report: Report) -> str | None:
    """One shell line that runs exactly the unfinished cells and shards (None when there are none).

    Hydra's basic sweeper runs cartesian products only, so the unfinished jobs are merged into the fewest
    products this greedy pass finds (cells differing in one axis share a sweep; a cell's unfinished shards are
    swept as shard.index), and several sweeps are joined with `;`: each runs whatever the one before left.
    """
    from analysis.completeness import resume_command

    blocks = _merge([unit for cell in report.cells if (unit := _unit(cell)) is not None])
    commands = []
    for block in blocks:
        args = [key if values == {None} else f"{key}={','.join(_sorted(values))}" for key, values in block.items()]
        commands.append(resume_command(["-m", *args], report.root).replace(" hydra.mode=RUN", ""))
    return " ; ".join(commands) or None


def render(report: Report, stale_after_s: float | None = None) -> str:
    """The cell table, each unfinished shard with its reason, and the finishing command."""
    counts = report.counts()
    total = sum(counts.values())
    head = f"Status of {report.root}: {len(report.cells)} cells, {total} shards: "
    head += ", ".join(f"{n} {state}" for state, n in counts.items())
    rows = []
    for cell in report.cells:
        states = [s.state for s in cell.shards]
        rows.append([cell.dir, *(_count(states, s) for s in STATES)])
    out = [head]
    if rows:
        out += ["", markdown(["cell", *STATES], rows).rstrip("\n")]
    pending = [(cell, group) for cell in report.cells for group in _groups(cell) if group[0].state != "done"]
    if pending:
        out += ["", "Not done:"]
    for cell, group in pending:
        out.append(f"- {cell.dir}{_shards_text(group, cell.count)}: {group[0].state}, {group[0].detail}")
    command = finish_command(report)
    running = counts["running"]
    if command:
        out += ["", "Finish the sweep (only the unfinished cells and shards; recorded queries are never asked again):"]
        out.append(f"  {command}")
    if running:
        stale = f"{stale_after_s:g} s" if stale_after_s is not None else f"{STALE_BEATS} missed heartbeats"
        out += ["", f"{running} shards are running and left out: check again later (a job is stale after {stale}"]
        out[-1] += " without a heartbeat; --stale-after SECONDS sets it)."
    out += [f"note: {n}" for n in report.notes]
    return "\n".join(out) + "\n"


def as_json(report: Report) -> str:
    cells = [asdict(c) for c in report.cells]
    out = {"root": str(report.root), "complete": report.complete, "counts": report.counts(), "cells": cells,
           "finish_command": finish_command(report), "notes": report.notes}  # fmt: skip
    return json.dumps(out, indent=1)


# ---- what was planned


@dataclass
class _Plan:
    overrides: tuple[str, ...] = ()
    hydra_overrides: tuple[str, ...] = ()
    count: int = 1
    whole: bool = True
    shards: set[int] | None = field(default_factory=set)  # None: every shard of `count`

    def add(self, overrides: list[str], hydra: list[str], count: int, index: int | None) -> None:
        """A later plan of the same cell wins: its overrides, count and way of running (whole or per shard)."""
        if count != self.count:
            self.shards = set()
        self.overrides = tuple(o for o in overrides if _key(o) != SHARD)
        self.hydra_overrides, self.count, self.whole = tuple(hydra), count, index is None
        if index is None:
            self.shards = None
        elif self.shards is not None:
            self.shards.add(index)


def _plans(root: Path) -> dict[str, _Plan]:
    """Every cell planned in root/.plans (oldest first), and every cell with a job that started (single runs,
    sweeps from before plans were kept) from its status files."""
    plans: dict[str, _Plan] = {}
    for path in sorted((root / PLANS).glob("*.json")):
        plan = _read_json(path)
        for job in plan.get("jobs", []):
            cell = plans.setdefault(job["dir"], _Plan(count=int(job["shard_count"])))
            cell.add(job["overrides"], plan.get("hydra_overrides", []), int(job["shard_count"]), job["shard_index"])
    for job_dir, status in _started(root):
        rel = job_dir.relative_to(root).as_posix()
        if rel not in plans:
            count, index = _shards_of(job_dir, status)
            plans[rel] = _Plan(count=count)
            plans[rel].add(status.get("overrides") or [], [], count, index)
    return plans


def _started(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(job folder, status) of every status file under root; hidden folders and shard folders skipped."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in ("shards", "status"))
        here = Path(folder)
        paths = (["status.json"] if "status.json" in files else []) + sorted((here / "status").glob("shard-*.json"))
        for path in paths:
            status = _read_json(here / path)
            if status:
                yield here, status


def _shards_of(job_dir: Path, status: dict[str, Any]) -> tuple[int, int | None]:
    """(shard count, index) of a started job: from its status file, else from its overrides and shard files."""
    if "shard_count" in status:
        return int(status["shard_count"]), status.get("shard_index")
    from analysis.completeness import shard_count

    index = next((o.split("=", 1)[1] for o in status.get("overrides") or [] if _key(o) == SHARD), None)
    return shard_count(job_dir), None if index in (None, "null") else int(index)


# ---- what is on disk


def _cell(root: Path, rel: str, plan: _Plan, now: float, stale_after_s: float | None) -> Cell:
    job_dir = root / rel
    whole = _read_json(status_files(job_dir, plan.count, None)[0])
    if whole.get("shard_count", plan.count) != plan.count:
        whole = {}  # a run with another shard count: its markers do not answer for these shards
    states = []
    for index in sorted(range(plan.count) if plan.shards is None else plan.shards & set(range(plan.count))):
        if (job_dir / "shards" / f"{shard_stem(index, plan.count)}.done").exists():
            states.append(ShardState(index, "done"))
            continue
        own = _read_json(status_files(job_dir, plan.count, index)[0])
        latest = max((s for s in (own, whole) if s), key=lambda s: float(s.get("started") or 0), default=None)
        states.append(_job_state(index, latest, job_dir, now, stale_after_s))
    return Cell(rel, plan.overrides, plan.hydra_overrides, plan.count, plan.whole, tuple(states))


def _job_state(
    index: int, status: dict[str, Any] | None, job_dir: Path, now: float, stale_after_s: float | None
) -> ShardState:
    """The state of an unmarked shard, from the status of the latest job that ran it."""
    if status is None:
        return ShardState(index, "missing", "never started")
    where = f"host {status.get('host')}, pid {status.get('pid')}" + (
        f", job {status['job_id']}" if status.get("job_id") else ""
    )
    state = status.get("status")
    if state == "failed":
        trace = f" (traceback: {job_dir / status['traceback']})" if status.get("traceback") else ""
        return ShardState(index, "failed", f"{status.get('error', '')}{trace}")
    if state == "completed":
        return ShardState(index, "missing", "its job ended before the shard was done (budget or pending batches)")
    beat = float(status.get("heartbeat") or status.get("started") or 0)
    limit = stale_after_s if stale_after_s is not None else STALE_BEATS * float(status.get("heartbeat_s", HEARTBEAT_S))
    if status.get("host") == socket.gethostname() and not _alive(status.get("pid")):
        return ShardState(index, "stale", f"its process is gone ({where})")
    if now - beat > limit:
        return ShardState(index, "stale", f"no heartbeat for {now - beat:.0f} s ({where})")
    return ShardState(index, "running", f"heartbeat {now - beat:.0f} s ago ({where})")


def _alive(pid: Any) -> bool:
    """Whether the job's process still runs on this host (True where no pid was recorded)."""
    try:
        return lock.running(int(pid))
    except (TypeError, ValueError):
        return True


# ---- the finishing command


def _unit(cell: Cell) -> dict[str, set[str | None]] | None:
    """The overrides that run a cell's unfinished shards (None when it has none): the whole cell where it was
    planned whole and nothing of it is done or running, else its unfinished shards by shard.index."""
    todo = [s.index for s in cell.shards if s.state in UNFINISHED]
    if not todo:
        return None
    unit: dict[str, set[str | None]] = {}
    for override in (*cell.hydra_overrides, *cell.overrides):
        key, _, value = override.partition("=")
        unit[key] = {value if "=" in override else None}
    if not (cell.whole and len(todo) == len(cell.shards)):
        unit[SHARD] = {str(i) for i in todo}
    return unit


def _merge(units: list[dict[str, set[str | None]]]) -> list[dict[str, set[str | None]]]:
    """Merge units that differ in one key only (their product is exactly their union) until none do."""
    blocks = [dict(u) for u in units]
    changed = True
    while changed:
        changed = False
        keys = list(dict.fromkeys(k for b in blocks for k in b))
        for key in keys:
            buckets: dict[Any, dict[str, set[str | None]]] = {}
            for block in blocks:
                rest = tuple(sorted((k, tuple(_sorted(v))) for k, v in block.items() if k != key))
                signature = (rest, key in block)
                if signature in buckets and key in block:
                    buckets[signature][key] |= block[key]
                    changed = True
                elif signature in buckets:
                    changed = True  # the same cell twice: keep one
                else:
                    buckets[signature] = {k: set(v) for k, v in block.items()}
            blocks = list(buckets.values())
    return blocks


def _sorted(values: set[str | None]) -> list[str]:
    """Numbers in numeric order (shard indices), the rest as text."""
    text = [v for v in values if v is not None]
    return sorted(text, key=lambda v: (0, int(v), "") if v.lstrip("-").isdigit() else (1, 0, v))


# ---- small helpers


def _groups(cell: Cell) -> list[list[ShardState]]:
    """Consecutive shards with the same state and reason, for one line each."""
    groups: list[list[ShardState]] = []
    for shard in cell.shards:
        if groups and (groups[-1][-1].state, groups[-1][-1].detail) == (shard.state, shard.detail):
            groups[-1].append(shard)
        else:
            groups.append([shard])
    return groups


def _shards_text(group: list[ShardState], count: int) -> str:
    if count == 1:
        return ""
    if len(group) == count:
        return f" (all {count} shards)"
    indices = [s.index for s in group]
    if len(indices) == 1:
        return f" shard {indices[0]} of {count}"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f" shards {indices[0]}-{indices[-1]} of {count}"
    return f" shards {','.join(map(str, indices))} of {count}"


def _count(states: list[str], state: str) -> str:
    n = states.count(state)
    if state == "done":
        return f"{n}/{len(states)}"
    return str(n) if n else ""


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}
