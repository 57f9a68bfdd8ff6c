"""The sweep's bookkeeping, written by a Hydra callback from wherever each job runs (this process, a joblib
worker, a SLURM node, a Ray worker): the plan of every multirun, a status file per job with a heartbeat, and the
sweep table.

Hydra 1.3 skips `on_multirun_end` when a job failed, and never calls `on_job_end` for a killed job, so nothing
here is a summary kept in memory: `python -m harness status` (harness/status.py) crosses the plans with these
files. The callback never raises: a failure to write bookkeeping must not fail a job.

<sweep>/.plans/<time>-<pid>.json   every multirun's planned jobs: folder, overrides, shards (kept across reruns)
<sweep>/.jobs/                     the latest multirun's job pointers, for the table printed when it ends
<job>/status.json, <job>/error.txt                  the job that runs every shard of its cell
<job>/status/shard-0003-of-0016.json, .error.txt     a job of one shard (`shard.index` swept)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from analysis.summary import markdown, table_headers, table_row
from harness.errors import Interrupted
from harness.runner.store import shard_stem, write_json

log = logging.getLogger(__name__)
LEDGER = ".jobs"  # per-job pointers of the latest multirun, under the sweep folder
PLANS = ".plans"  # the planned jobs of every multirun into the sweep folder
HEARTBEAT_S = 30.0  # a running job rewrites its status file this often; HARNESS_HEARTBEAT_S overrides it
HEARTBEAT_ENV = "HARNESS_HEARTBEAT_S"


def status_files(job_dir: Path, shard_count: int, shard_index: int | None) -> tuple[Path, Path]:
    """(status file, traceback file) of the job that runs one shard of a cell, or all of them (index None)."""
    if shard_index is None:
        return job_dir / "status.json", job_dir / "error.txt"
    stem = shard_stem(shard_index, shard_count)
    return job_dir / "status" / f"{stem}.json", job_dir / "status" / f"{stem}.error.txt"


def expand_sweep(params: Mapping[str, Any], overrides: Sequence[str], config_loader: Any = None) -> list[list[str]]:
    """The override list of every job, as Hydra's basic sweeper expands the sweeper params and the command line
    (a cartesian product; a command-line key replaces the same params key). The config loader expands glob()."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def sweep_table(sweep_dir: Path, robust: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table and rows for the jobs of the latest sweep in sweep_dir (`robust`: its column too)."""
    ledger = sweep_dir / LEDGER
    entries = [json.loads(p.read_text()) for p in sorted(ledger.glob("job-*.json"), key=_job_number)]
    jobs, tasks = [], []
    for entry in entries:
        job_dir = sweep_dir / entry["dir"]
        status = _read_json(sweep_dir / entry.get("status", Path(entry["dir"]) / "status.json"))
        status = status or {"status": "missing"}
        summary = _read_json(job_dir / "summary.json") if status["status"] == "completed" else None
        for task in (summary or {}).get("tasks", {}):
            if task not in tasks:
                tasks.append(task)
        jobs.append({"dir": entry["dir"], "overrides": entry["overrides"], "status": status, "summary": summary})
    rows = [table_row(_row_name(j), _status_cell(j["status"]), j["summary"], tasks, robust) for j in jobs]
    return markdown(table_headers(tasks, robust), rows), jobs


class SweepLedger(Callback):
    """Keeps the ledger of real runs only: a `run.estimate=true` sweep leaves the last sweep's files alone."""

    def __init__(self) -> None:
        self._beats: dict[Path, _Heartbeat] = {}  # status file -> its running heartbeat, in the job's process

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _estimating(config):
            _quietly(self._start, config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _estimating(config):
            _quietly(self._job_start, config)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _estimating(config):
            _quietly(self._job_end, config, job_return)
        error = job_return._return_value if job_return.status == JobStatus.FAILED else None
        if isinstance(error, Interrupted):  # SIGTERM/SIGINT: the sweep stops here, no later job starts
            raise SystemExit(error.exit_code)  # not an Exception: Hydra's callback runner lets it through

    def _start(self, config: DictConfig) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        shutil.rmtree(sweep_dir / LEDGER, ignore_errors=True)
        (sweep_dir / LEDGER).mkdir(parents=True)
        jobs = _plan(config)
        write_json(sweep_dir / LEDGER / "plan.json", {"argv": sys.argv, "jobs": len(jobs)})
        plan = {
            "argv": sys.argv,
            "launcher": OmegaConf.select(config, "hydra.runtime.choices.launcher"),
            "hydra_overrides": [o for o in config.hydra.overrides.hydra if not o.startswith("hydra.mode=")],
            "jobs": jobs,
        }
        write_json(sweep_dir / PLANS / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json", plan)

    def _job_start(self, config: DictConfig) -> None:
        job_dir = Path(config.hydra.runtime.output_dir)
        count, index = int(config.shard.count), config.shard.index
        status_path, _ = status_files(job_dir, count, index)
        previous = _read_json(status_path) or {}
        now = time.time()
        status = {
            "status": "running",
            "started": now,
            "heartbeat": now,
            "heartbeat_s": _heartbeat_s(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": str(OmegaConf.select(config, "hydra.job.id", default="")),  # SLURM's id under submitit
            "attempt": int(previous.get("attempt", 0)) + 1,  # a requeued or rerun job counts up
            "launcher": OmegaConf.select(config, "hydra.runtime.choices.launcher"),
            "overrides": list(config.hydra.overrides.task),
            "shard_count": count,
            "shard_index": index,
        }
        write_json(status_path, status)
        beat = _Heartbeat(status_path, status)
        self._beats[status_path] = beat
        beat.start()
        if _is_multirun():
            sweep_dir = Path(config.hydra.sweep.dir)
            entry = {
                "dir": os.path.relpath(job_dir, sweep_dir),
                "status": os.path.relpath(status_path, sweep_dir),
                "overrides": status["overrides"],
            }
            write_json(sweep_dir / LEDGER / f"job-{config.hydra.job.num}.json", entry)

    def _job_end(self, config: DictConfig, job_return: JobReturn) -> None:
        job_dir = Path(config.hydra.runtime.output_dir)
        status_path, traceback_path = status_files(job_dir, int(config.shard.count), config.shard.index)
        beat = self._beats.pop(status_path, None)
        status = beat.stop() if beat is not None else _read_json(status_path) or {}
        status.update(status="completed", ended=time.time())
        if job_return.status != JobStatus.COMPLETED:
            error = job_return._return_value
            first = (f"{type(error).__name__}: {error}".splitlines() or [""])[0]
            status.update(status="failed", error=first, traceback=str(traceback_path.relative_to(job_dir)))
            traceback_path.parent.mkdir(parents=True, exist_ok=True)
            traceback_path.write_text("".join(traceback.format_exception(error)))
        write_json(status_path, status)
        if not _is_multirun():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        table, jobs = sweep_table(sweep_dir, robust=config.get("scoring") == "robust")
        write_json(sweep_dir / "sweep.json", {"jobs": jobs})
        planned = (_read_json(sweep_dir / LEDGER / "plan.json") or {}).get("jobs")
        ended = [j for j in jobs if j["status"]["status"] in ("completed", "failed")]
        if planned is not None and len(ended) >= planned:
            print(f"\nSweep {sweep_dir} ({len(ended)} jobs):\n{table}\n", flush=True)
            print("Accuracy in %; errors count as wrong; overall = mean of the families.", flush=True)
            failed = [j for j in jobs if j["status"]["status"] == "failed"]
            if failed:
                print(f"{len(failed)} job(s) failed; see error.txt in their folders.", flush=True)


class _Heartbeat(threading.Thread):
    """Rewrites a running job's status file every few seconds, so a job killed without warning (SIGKILL, out of
    memory, a lost node) shows as stale instead of running forever."""

    def __init__(self, path: Path, status: dict[str, Any]) -> None:
        super().__init__(name=f"heartbeat {path}", daemon=True)
        self.path, self.status = path, status
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.status["heartbeat_s"]):
            self.status["heartbeat"] = time.time()
            try:
                write_json(self.path, self.status)
            except OSError:  # a full or flaky disk must not kill the job; the next beat tries again
                log.debug("heartbeat of %s not written", self.path, exc_info=True)

    def stop(self) -> dict[str, Any]:
        """Stops the beats (the last one finishes first) and gives the status they were writing."""
        self._stopped.set()
        self.join()
        return self.status


def _plan(config: DictConfig) -> list[dict[str, Any]]:
    """Every job the multirun will launch: its folder under the sweep, its overrides and its shards."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    loader = hydra.config_loader() if hydra.is_initialized() else None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    jobs = []
    for overrides in expand_sweep(params, list(config.hydra.overrides.task), loader):
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        index = values.get("shard.index", config.shard.index)
        jobs.append(
            {
                "dir": _job_dir(config, overrides),
                "overrides": overrides,
                "shard_count": int(values.get("shard.count", config.shard.count)),
                "shard_index": None if index in (None, "null") else int(index),
            }
        )
    return jobs


def _job_dir(config: DictConfig, overrides: list[str]) -> str:
    """The job's folder under the sweep folder, named by Hydra's rule (hydra.sweep.subdir from override_dirname)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = [o for o in OverridesParser.create().parse_overrides(overrides) if not o.is_hydra_override()]
    naming = config.hydra.job.config.override_dirname
    dirname = get_overrides_dirname(parsed, list(naming.exclude_keys), naming.item_sep, naming.kv_sep)
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"]  # type: ignore[index]
    node = OmegaConf.create({"hydra": {"job": {"override_dirname": dirname}}, "subdir": subdir})
    try:
        return str(node.subdir)
    except Exception:  # a subdir naming the job by something else (hydra:runtime...): conf/config.yaml's rule
        from harness.config import slug

        return slug(dirname)


def _heartbeat_s() -> float:
    try:
        return max(0.1, float(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_S)))
    except ValueError:
        return HEARTBEAT_S


def _estimating(config: DictConfig) -> bool:
    return bool(OmegaConf.select(config, "run.estimate", default=False))


def _is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def _row_name(job: dict[str, Any]) -> str:
    index = job["status"].get("shard_index")
    return job["dir"] if index is None else f"{job['dir']} shard {index}"


def _status_cell(status: dict[str, Any]) -> str:
    if status["status"] == "failed":
        return f"failed: {status.get('error', '')[:60]}"
    return str(status["status"])


def _job_number(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _quietly(hook: Any, *args: Any) -> None:
    try:
        hook(*args)
    except Exception:  # bookkeeping must never fail a job
        log.warning("sweep ledger: %s failed", hook.__name__, exc_info=True)
