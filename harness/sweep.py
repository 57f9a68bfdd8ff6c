"""The sweep table: one row per job, built from the job folders alone.

Hydra 1.3 skips `on_multirun_end` when a job failed, so the table is rebuilt after every job
from what is on disk (`status.json`, `summary.json`) and printed when the last planned job ends.
The callback never raises: a failure to write bookkeeping must not fail a job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from analysis.summary import markdown, table_headers, table_row
from harness.runner.store import write_json

log = logging.getLogger(__name__)
LEDGER = ".jobs"  # per-job pointers of the current sweep, under the sweep folder


def sweep_table(sweep_dir: Path, robust: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table and rows for the jobs of the latest sweep in sweep_dir (`robust`: its column too)."""
    ledger = sweep_dir / LEDGER
    entries = [json.loads(p.read_text()) for p in sorted(ledger.glob("job-*.json"), key=_job_number)]
    jobs, tasks = [], []
    for entry in entries:
        job_dir = sweep_dir / entry["dir"]
        status = _read_json(job_dir / "status.json") or {"status": "missing"}
        summary = _read_json(job_dir / "summary.json") if status["status"] == "completed" else None
        for task in (summary or {}).get("tasks", {}):
            if task not in tasks:
                tasks.append(task)
        jobs.append({"dir": entry["dir"], "overrides": entry["overrides"], "status": status, "summary": summary})
    rows = [table_row(j["dir"], _status_cell(j["status"]), j["summary"], tasks, robust) for j in jobs]
    return markdown(table_headers(tasks, robust), rows), jobs


class SweepLedger(Callback):
    """Keeps the ledger of real runs only: a `run.estimate=true` sweep leaves the last sweep's table alone."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _estimating(config):
            _quietly(self._start, config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _estimating(config):
            _quietly(self._job_start, config)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _estimating(config):
            _quietly(self._job_end, config, job_return)

    def _start(self, config: DictConfig) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        shutil.rmtree(sweep_dir / LEDGER, ignore_errors=True)
        (sweep_dir / LEDGER).mkdir(parents=True)
        write_json(sweep_dir / LEDGER / "plan.json", {"argv": sys.argv, "jobs": _planned_jobs(config)})

    def _job_start(self, config: DictConfig) -> None:
        job_dir = Path(config.hydra.runtime.output_dir)
        overrides = list(config.hydra.overrides.task)
        write_json(
            job_dir / "status.json",
            {
                "status": "running",
                "started": time.time(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "overrides": overrides,
            },
        )
        if _is_multirun():
            sweep_dir = Path(config.hydra.sweep.dir)
            entry = {"dir": os.path.relpath(job_dir, sweep_dir), "overrides": overrides}
            write_json(sweep_dir / LEDGER / f"job-{config.hydra.job.num}.json", entry)

    def _job_end(self, config: DictConfig, job_return: JobReturn) -> None:
        job_dir = Path(config.hydra.runtime.output_dir)
        status = _read_json(job_dir / "status.json") or {}
        status.update(status="completed", ended=time.time())
        if job_return.status != JobStatus.COMPLETED:
            error = job_return._return_value
            status.update(status="failed", error=(f"{type(error).__name__}: {error}".splitlines() or [""])[0])
            (job_dir / "error.txt").write_text("".join(traceback.format_exception(error)))
        write_json(job_dir / "status.json", status)
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


def _planned_jobs(config: DictConfig) -> int:
    """How many jobs the basic sweeper will launch (cartesian product of the sweep axes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(arguments)
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))


def _estimating(config: DictConfig) -> bool:
    return bool(OmegaConf.select(config, "run.estimate", default=False))


def _is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


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
