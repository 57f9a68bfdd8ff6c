"""Shard files on disk: one JSONL line per query, appended and flushed at once, so a killed job
loses at most the line it was writing; that torn last line is cut off when the file is reopened."""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.errors import DataError
from harness.records import ResultRecord


def shard_stem(index: int, count: int) -> str:
    return f"shard-{index:04d}-of-{count:04d}"


def load_records(path: Path) -> list[ResultRecord]:
    """All complete records of one shard file; repairs a torn last line in place (before appending)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    return read_records(path)


def read_job(job_dir: Path) -> list[ResultRecord]:
    """Every complete record of a job folder (all its shard files), read only: for analysis and export."""
    return [r for path in sorted((Path(job_dir) / "shards").glob("*.jsonl")) for r in read_records(path)]


def read_records(path: Path) -> list[ResultRecord]:
    """All complete records of one shard file, read only: a torn last line (no newline yet) is skipped."""
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):  # what follows the last newline is torn or empty
        try:
            records.append(ResultRecord.from_json(line))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(
                f"{path}, line {number}: not a result record ({e}). Remove that line or the file to redo those queries."
            ) from None
    return records


def rewrite(path: Path, records: list[ResultRecord]) -> None:
    """Replace a shard file atomically (used to drop error records before a retry)."""
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(r.to_json() + "\n" for r in records))
    os.replace(tmp, path)


class ShardWriter:
    """Appends records to one shard file; each line is flushed before the next query goes on."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def append(self, record: ResultRecord) -> None:
        self._file.write(record.to_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_json(path: Path, content: object) -> None:
    """Write a small JSON file atomically (done markers, manifests, status), so a reader never
    sees half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, default=str))
    os.replace(tmp, path)
