"""Every record of a run (all jobs, all shards) in one pandas DataFrame, with each job's config.

A job is a folder holding config.yaml under the run (hidden folders such as .hydra are not jobs). Shard
files are read only: a torn last line (a job killed mid-write, or still writing) is left out, never
repaired here. Each job's records are cached as Parquet in <run>/.analysis/, keyed by the size and
modification time of its shard files, so a second load of a large run reads Parquet only and a job
that grew is read again alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq
import yaml

from analysis import axes as axes_
from analysis.causes import OK, RULE_SCORED, error_cause
from harness.errors import DataError

CACHE_DIR = ".analysis"
CACHE_VERSION = 1  # bump when the cached columns change
FLOATS = ("time_s", "span_end_s", "span_start_s", "score", "latency_s", "modelled_latency_s", "ttft_s", "cost_usd",
          "response_time_s")  # fmt: skip
INTS = ("tokens_in", "tokens_out", "visual_tokens", "n_calls", "memory_frames", "memory_tokens", "memory_bytes",
        "memory_notes")  # fmt: skip
CATEGORIES = ("sample_id", "query_id", "task", "kind", "route", "route_reason", "config_hash")
DROPPED = {"schema", "frame_times_s", "response", "parsed", "judge_outputs", "judge_failed", "subscores", "audio"}
SUBSCORE = "sub."  # prefix of the columns that hold a record's subscores
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML has it: 40x faster


@dataclass(frozen=True)
class Job:
    """One job folder: its flat config and the bookkeeping files beside its records."""

    id: str  # the folder relative to its run ("<run>/<folder>" when several runs are loaded together)
    path: Path
    config: dict[str, Any]  # dotted keys, from config.yaml
    status: dict[str, Any]  # status.json ({} when the job ran outside a sweep)
    manifest: dict[str, Any]  # manifest.json ({} before the job wrote one)

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset.name"))


@dataclass
class Run:
    """The loaded run(s): jobs by id, one row per record, and the axes along which the jobs differ."""

    roots: tuple[Path, ...]
    jobs: dict[str, Job]
    records: pd.DataFrame
    axes: list[str]

    def labels(self, keys: Sequence[str] | None = None) -> pd.DataFrame:
        """Axis values as text, one row per job (index: job id), one column per key."""
        keys = self.axes if keys is None else list(keys)
        rows = {j.id: [axes_.value_text(j.config.get(k)) for k in keys] for j in self.jobs.values()}
        return pd.DataFrame.from_dict(rows, orient="index", columns=keys)

    def subset(self, job_ids: Sequence[str]) -> Run:
        """The same run restricted to some jobs; axes are those along which the kept jobs still differ."""
        jobs = {j: self.jobs[j] for j in self.jobs if j in set(job_ids)}
        records = self.records[self.records["job"].isin(list(jobs))].copy()
        records["job"] = records["job"].cat.remove_unused_categories()
        return Run(self.roots, jobs, records, axes_.detect({j.id: j.config for j in jobs.values()}))


def load(paths: Sequence[Path] | Path, cache: bool = True) -> Run:
    """Load one run folder (or job folder), or several runs side by side (they differ by the `run` axis)."""
    roots = (Path(paths),) if isinstance(paths, str | Path) else tuple(Path(p) for p in paths)
    jobs: dict[str, Job] = {}
    tables = []
    for root in roots:
        if not root.is_dir():
            raise DataError(f"{root}: no such run folder (expected outputs/<run.name>/ with a folder per job)")
        prefix = f"{root.name}/" if len(roots) > 1 else ""
        found = find_jobs(root)
        cache_dir = root / CACHE_DIR if cache else None
        for path in found:
            job = read_job(path, prefix + (path.relative_to(root).as_posix() if path != root else path.name))
            if len(roots) > 1:
                job.config["run"] = root.name
            jobs[job.id] = job
            tables.append(_with_job(job_table(job, cache_dir), job.id))
    if not jobs:
        shown = ", ".join(map(str, roots))
        raise DataError(f"{shown}: no job folders (a folder with config.yaml) found; is this outputs/<run.name>/?")
    records = _frame(tables)
    return Run(roots, jobs, records, axes_.detect({j.id: j.config for j in jobs.values()}))


def find_jobs(root: Path) -> list[Path]:
    """Folders with config.yaml below root (root itself when it is a job folder), hidden folders skipped."""
    if (root / "config.yaml").is_file():
        return [root]
    found = []
    for folder, subfolders, files in os.walk(root):
        if "config.yaml" in files:
            found.append(Path(folder))
            subfolders.clear()
        else:
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d != "shards")
    return sorted(found)


def read_job(path: Path, job_id: str) -> Job:
    config_path = path / "config.yaml"
    try:
        config = yaml.load(config_path.read_text(), Loader=SAFE_LOADER) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{config_path}: not YAML ({e}); restore it from .hydra/config.yaml or rerun the job") from None
    return Job(job_id, path, axes_.flatten(config), _json(path / "status.json"), _json(path / "manifest.json"))


def job_table(job: Job, cache_dir: Path | None) -> pa.Table:
    """The job's records as Arrow: from the Parquet cache when its shard files have not changed."""
    files = sorted((job.path / "shards").glob("*.jsonl"))
    sizes = [(f, f.stat()) for f in files]
    fingerprint = json.dumps([CACHE_VERSION, [(f.name, s.st_size, s.st_mtime_ns) for f, s in sizes]])
    cached = None if cache_dir is None else cache_dir / f"{hashlib.sha1(job.id.encode()).hexdigest()[:16]}.parquet"
    if cached is not None and cached.is_file():
        metadata = pq.read_schema(cached).metadata or {}
        if metadata.get(b"fingerprint") == fingerprint.encode():
            return pq.read_table(cached)
    parts = [t for f, s in sizes if (t := read_shard(f, s.st_size)) is not None]
    table = pa.concat_tables(parts, promote_options="permissive") if parts else _empty()
    if cached is not None:
        _write_cache(cached, table, fingerprint)
    return table


def read_shard(path: Path, size: int | None = None) -> pa.Table | None:
    """The complete records of one shard file (up to `size` bytes), normalised to the loader's columns."""
    with path.open("rb") as f:
        data = f.read() if size is None else f.read(size)
    data = data[: data.rfind(b"\n") + 1]  # what follows the last newline is a torn line (or nothing)
    if not data:
        return None
    try:
        raw = pj.read_json(io.BytesIO(data), read_options=pj.ReadOptions(block_size=max(1 << 20, len(data) // 8)))
    except pa.ArrowInvalid:
        raw = pa.Table.from_pylist(_python_rows(path, data))
    table = _normalise(raw)
    stem = pa.DictionaryArray.from_arrays(pa.array(np.zeros(table.num_rows, np.int32)), pa.array([path.stem]))
    return table.append_column("shard", stem)


def _python_rows(path: Path, data: bytes) -> list[dict[str, Any]]:
    """The slow path, for a file Arrow cannot read: find the bad line and name it."""
    rows = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").split("\n")[:-1], start=1):
        try:
            row = json.loads(line)
            problem = "" if isinstance(row, dict) and "query_id" in row else "no query_id field"
        except json.JSONDecodeError as e:
            problem = str(e)
        if problem:
            raise DataError(
                f"{path}, line {number}: not a result record ({problem}). Remove that line or the file to redo "
                "those queries."
            )
        rows.append(row)
    return rows


def _normalise(raw: pa.Table) -> pa.Table:
    """Fixed types for the known fields (a column absent from old records gets its default), derived counts
    for the lists, one `sub.<key>` column per subscore; unknown numeric fields (newer records) are kept."""
    n = raw.num_rows
    columns: dict[str, pa.Array] = {}
    for name in CATEGORIES + ("error",):
        columns[name] = _column(raw, name, pa.string(), n)
    for name in FLOATS:
        columns[name] = _column(raw, name, pa.float64(), n)
    for name in INTS:
        columns[name] = pc.fill_null(_column(raw, name, pa.int64(), n), 0)
    columns["n_frames"] = _length(raw, "frame_times_s", n)
    columns["judge_failed"] = _length(raw, "judge_failed", n)
    response = _column(raw, "response", pa.string(), n)
    columns["answered"] = pc.is_valid(response)
    columns["empty_response"] = pc.fill_null(pc.equal(response, ""), False)
    columns["parsed_ok"] = pc.is_valid(_column(raw, "parsed", pa.string(), n))
    if "subscores" in raw.column_names and pa.types.is_struct(raw["subscores"].type):
        subscores = raw["subscores"].combine_chunks()
        for i in range(subscores.type.num_fields):
            field = subscores.type.field(i)
            if pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_null(field.type):
                columns[SUBSCORE + field.name] = pc.struct_field(subscores, [i]).cast(pa.float64())
    for name in raw.column_names:
        kind = raw[name].type
        known = name in columns or name in DROPPED
        if not known and (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            columns[name] = raw[name].combine_chunks()
    for name in CATEGORIES:
        columns[name] = columns[name].dictionary_encode()
    return pa.table(columns)


def _column(raw: pa.Table, name: str, kind: pa.DataType, n: int) -> pa.Array:
    if name not in raw.column_names:
        return pa.nulls(n, kind)
    return raw[name].combine_chunks().cast(kind)


def _length(raw: pa.Table, name: str, n: int) -> pa.Array:
    if name not in raw.column_names or not pa.types.is_list(raw[name].type):
        return pa.array(np.zeros(n, np.int64))
    return pc.fill_null(pc.list_value_length(raw[name].combine_chunks()), 0).cast(pa.int64())


def _empty() -> pa.Table:
    table = _normalise(pa.table({"query_id": pa.array([], pa.string())}))
    return table.append_column("shard", pa.array([], pa.string()).dictionary_encode())


def _with_job(table: pa.Table, job_id: str) -> pa.Table:
    indices = pa.array(np.zeros(table.num_rows, np.int32))
    return table.append_column("job", pa.DictionaryArray.from_arrays(indices, pa.array([job_id], pa.string())))


def _frame(tables: list[pa.Table]) -> pd.DataFrame:
    """One DataFrame; `cause` is each record's status (`ok` or one of causes.CAUSES)."""
    frame = pa.concat_tables(tables, promote_options="permissive").to_pandas()
    for name in (*CATEGORIES, "job", "shard"):
        if not isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = frame[name].astype("category")
    frame["cause"] = _causes(frame)
    return frame


def _causes(frame: pd.DataFrame) -> pd.Categorical:
    errors = frame["error"].astype("category")
    by_error = np.array([error_cause(str(e)) for e in errors.cat.categories] + [OK], dtype=object)
    cause = by_error[errors.cat.codes.to_numpy()]  # code -1 (no error) picks OK
    clean = errors.cat.codes.to_numpy() < 0
    judged = clean & (frame["judge_failed"].to_numpy() > 0)
    rule = frame["kind"].isin(list(RULE_SCORED)).to_numpy()
    unread = clean & ~judged & rule & frame["answered"].to_numpy() & ~frame["parsed_ok"].to_numpy()
    cause[judged] = "judge_error"
    cause[unread] = "unparseable"
    return pd.Categorical(cause)


def _write_cache(path: Path, table: pa.Table, fingerprint: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        pq.write_table(table.replace_schema_metadata({"fingerprint": fingerprint}), tmp)
        os.replace(tmp, path)
    except OSError:  # a read-only run folder: load from the shards every time
        pass


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
