"""`python -m harness status` on sweep folders laid out as the ledger writes them (plans, status files, shard
markers), and the ledger callback itself: status files, heartbeat, traceback, never raising."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import open_dict, read_write

from harness import status
from harness.__main__ import main
from harness.config import register
from harness.runner.store import shard_stem, write_json
from harness.sweep import PLANS, SweepLedger, expand_sweep, status_files
from tests.helpers import CONF

NOW = 1_000_000.0
HOST = socket.gethostname()


def _plan(root: Path, jobs: list[tuple[str, list[str], int, int | None]], hydra: list[str] = (), name: str = "1"):
    entries = [{"dir": d, "overrides": o, "shard_count": c, "shard_index": i} for d, o, c, i in jobs]
    write_json(root / PLANS / f"{name}.json", {"argv": [], "hydra_overrides": list(hydra), "jobs": entries})


def _status(root: Path, cell: str, count: int, index: int | None, state: str, **fields) -> None:
    body = {"status": state, "started": NOW - 100, "heartbeat": NOW - 1, "heartbeat_s": 30.0, "host": HOST,
            "pid": os.getpid(), "shard_count": count, "shard_index": index, **fields}  # fmt: skip
    write_json(status_files(root / cell, count, index)[0], body)


def _done(root: Path, cell: str, count: int, *indices: int) -> None:
    for index in indices:
        write_json(root / cell / "shards" / f"{shard_stem(index, count)}.done", {"config_hash": "x"})


def _states(report: status.Report) -> dict[str, list[str]]:
    return {c.dir: [s.state for s in c.shards] for c in report.cells}


def test_every_state_of_a_shard_swept_cell(tmp_path):
    cell = "router=recent"
    _plan(tmp_path, [(cell, ["router=recent", f"shard.index={i}"], 5, i) for i in range(5)])
    _done(tmp_path, cell, 5, 0)
    _status(tmp_path, cell, 5, 1, "running")  # this process: alive, fresh heartbeat
    _status(tmp_path, cell, 5, 2, "running", host="elsewhere", heartbeat=NOW - 600)
    _status(tmp_path, cell, 5, 3, "failed", error="OSError: disk full", traceback="status/x.error.txt")
    report = status.check(tmp_path, now=NOW)
    assert _states(report) == {cell: ["done", "running", "stale", "failed", "missing"]}
    assert report.counts() == {"done": 1, "running": 1, "stale": 1, "failed": 1, "missing": 1}
    assert not report.complete
    details = {s.index: s.detail for s in report.cells[0].shards}
    assert "no heartbeat for 600 s" in details[2] and "OSError: disk full" in details[3]
    text = status.render(report)
    assert "- router=recent shard 3 of 5: failed, OSError: disk full (traceback: " in text
    assert "1 shards are running and left out" in text
    assert "python run_sweep.py -m router=recent shard.index=2,3,4" in text  # not the done or running ones


def test_a_dead_process_on_this_host_is_stale_at_once(tmp_path):
    dead = subprocess.Popen(["true"])  # a pid that existed and is gone
    dead.wait()
    _plan(tmp_path, [("a=1", ["a=1"], 1, None)])
    _status(tmp_path, "a=1", 1, None, "running", pid=dead.pid, heartbeat=NOW)
    (shard,) = status.check(tmp_path, now=NOW).cells[0].shards
    assert shard.state == "stale" and "process is gone" in shard.detail


def test_stale_after_overrides_the_heartbeat_rule(tmp_path):
    _plan(tmp_path, [("a=1", ["a=1"], 1, None)])
    _status(tmp_path, "a=1", 1, None, "running", heartbeat=NOW - 50)  # 4 x 30 s not yet missed
    assert _states(status.check(tmp_path, now=NOW)) == {"a=1": ["running"]}
    assert _states(status.check(tmp_path, stale_after_s=10, now=NOW)) == {"a=1": ["stale"]}


def test_a_whole_cell_job_answers_for_each_shard_and_markers_win(tmp_path):
    _plan(tmp_path, [("a=1", ["a=1"], 3, None), ("a=2", ["a=2"], 3, None)])
    _status(tmp_path, "a=1", 3, None, "failed", error="ValueError: boom")
    _done(tmp_path, "a=1", 3, 1)
    _status(tmp_path, "a=2", 3, None, "completed")  # ended early (budget): no marker
    report = status.check(tmp_path, now=NOW)
    assert _states(report) == {"a=1": ["failed", "done", "failed"], "a=2": ["missing"] * 3}
    assert "ended before the shard was done" in report.cells[1].shards[0].detail


def test_the_finishing_command_runs_only_unfinished_cells_and_shards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "outputs" / "demo"
    axes = [("router=recent", "scheduler=rule"), ("router=uniform", "scheduler=rule"),
            ("router=recent", "scheduler=force_s2"), ("router=uniform", "scheduler=force_s2")]  # fmt: skip
    cells = {",".join(a): a for a in axes}
    _plan(root, [(d, ["launcher=slurm", *a, "run.name=demo"], 4, None) for d, a in cells.items()],
          hydra=["hydra.launcher.partition=gpu"])  # fmt: skip
    done, started, running, fresh = (",".join(a) for a in axes)
    _done(root, done, 4, 0, 1, 2, 3)
    _done(root, started, 4, 0, 2)  # shards 1 and 3 left: swept by shard.index
    _status(root, started, 4, None, "failed", error="RuntimeError: x")
    _status(root, running, 4, None, "running")  # running: left out of the command
    report = status.check(root, now=NOW)
    command = status.finish_command(report)
    assert command == (
        "python run_sweep.py -m hydra.launcher.partition=gpu launcher=slurm router=uniform scheduler=force_s2 "
        "run.name=demo ; python run_sweep.py -m hydra.launcher.partition=gpu launcher=slurm router=uniform "
        "scheduler=rule shard.index=1,3 run.name=demo"
    )
    assert fresh not in (done, started, running)


def test_cells_that_differ_in_one_axis_share_one_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "outputs" / "demo"
    _plan(root, [(f"router={r}", [f"router={r}", f"shard.index={i}"], 2, i) for r in "abc" for i in (0, 1)], name="1")
    _plan(root, [("router=d", ["router=d"], 2, None)], name="2")  # a later multirun into the same folder
    _done(root, "router=c", 2, 0, 1)
    report = status.check(root, now=NOW)
    assert _states(report) == {"router=a": ["missing"] * 2, "router=b": ["missing"] * 2, "router=c": ["done"] * 2,
                               "router=d": ["missing"] * 2}  # fmt: skip
    assert status.finish_command(report) == (
        "python run_sweep.py -m router=a,b shard.index=0,1 run.name=demo ; "
        "python run_sweep.py -m router=d run.name=demo"
    )


def test_shard_jobs_and_a_whole_cell_job_mix_in_one_cell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "outputs" / "mix"
    _plan(root, [("r=a", ["r=a"], 4, None)], name="1")
    _plan(root, [("r=a", ["r=a", f"shard.index={i}"], 4, i) for i in range(4)], name="2")
    _status(root, "r=a", 4, None, "running", host="elsewhere", heartbeat=NOW - 1000, started=NOW - 2000)
    _done(root, "r=a", 4, 0, 1)
    _status(root, "r=a", 4, 2, "running")  # a shard job started after the whole job: it answers for shard 2
    report = status.check(root, now=NOW)
    assert _states(report) == {"r=a": ["done", "done", "running", "stale"]}
    assert status.finish_command(report) == "python run_sweep.py -m r=a shard.index=3 run.name=mix"


def test_a_complete_sweep_has_no_command_and_exits_zero(tmp_path, capsys):
    _plan(tmp_path, [("a=1", ["a=1"], 2, None)])
    _done(tmp_path, "a=1", 2, 0, 1)
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 done, 0 running, 0 stale, 0 failed, 0 missing" in out and "run_sweep.py" not in out
    assert status.finish_command(status.check(tmp_path)) is None


def test_the_cli_exits_one_while_incomplete_and_speaks_json(tmp_path, capsys):
    _plan(tmp_path, [("a=1", ["a=1"], 2, None)])
    _done(tmp_path, "a=1", 2, 0)
    assert main(["status", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["complete"] is False and report["counts"]["missing"] == 1
    assert shlex.split(report["finish_command"])[:3] == ["python", "run_sweep.py", "-m"]
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "no such sweep folder" in capsys.readouterr().err


def test_jobs_that_started_without_a_plan_are_still_shown(tmp_path):
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "status.json").write_text(json.dumps({"status": "failed", "error": "E: x",
                                                                 "overrides": ["router=recent"]}))  # fmt: skip
    _status(tmp_path, "swept", 4, 1, "failed", error="E: y")  # a job of one shard counts for that shard only
    report = status.check(tmp_path, now=NOW)
    assert _states(report) == {"single": ["failed"], "swept": ["failed"]}  # single: no shard files: one shard
    assert [s.index for s in report.cells[1].shards] == [1]
    assert report.notes and "no plan" in report.notes[0]


def test_expand_sweep_is_the_basic_sweepers_product():
    jobs = expand_sweep({"router": "a,b", "memory": "x"}, ["router=c,d", "shard.index=range(0,2)"])
    assert jobs == [
        ["router=c", "memory=x", "shard.index=0"],
        ["router=c", "memory=x", "shard.index=1"],
        ["router=d", "memory=x", "shard.index=0"],
        ["router=d", "memory=x", "shard.index=1"],
    ]


# ---- the ledger callback in a job's process


@pytest.fixture
def job_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HEARTBEAT_S", "0.1")
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["router=recent", "shard.index=1"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "job")
        cfg.hydra.job.id = "42_1"
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_the_ledger_writes_a_heartbeat_then_the_error_and_its_traceback(job_config, tmp_path):
    ledger = SweepLedger()
    ledger.on_job_start(job_config)
    path, trace = status_files(tmp_path / "job", 4, 1)
    first = json.loads(path.read_text())
    assert first["status"] == "running" and first["pid"] == os.getpid() and first["job_id"] == "42_1"
    assert first["launcher"] == "local" and first["attempt"] == 1 and "router=recent" in first["overrides"]
    deadline = time.monotonic() + 10
    while json.loads(path.read_text())["heartbeat"] == first["heartbeat"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(path.read_text())["heartbeat"] > first["heartbeat"]
    try:
        raise OSError("the data disk is not mounted\nsecond line")
    except OSError as e:
        error = e
    ledger.on_job_end(job_config, JobReturn(status=JobStatus.FAILED, _return_value=error))
    final = json.loads(path.read_text())
    assert final["status"] == "failed" and final["error"] == "OSError: the data disk is not mounted"
    assert "Traceback" in trace.read_text() and "second line" in trace.read_text()
    time.sleep(0.3)
    assert json.loads(path.read_text()) == final  # the heartbeat stopped with the job
    ledger.on_job_start(job_config)
    assert json.loads(path.read_text())["attempt"] == 2
    ledger.on_job_end(job_config, JobReturn(status=JobStatus.COMPLETED, _return_value=1.0))
    assert json.loads(path.read_text())["status"] == "completed"


def test_the_ledger_never_raises(job_config, tmp_path):
    (tmp_path / "job").write_text("a file where the job folder should be")
    ledger = SweepLedger()
    ledger.on_job_start(job_config)
    ledger.on_job_end(job_config, JobReturn(status=JobStatus.COMPLETED, _return_value=1.0))
    with read_write(job_config.hydra):
        job_config.hydra.sweep.dir = str(tmp_path / "job" / "sweep")  # under the file too
    ledger.on_multirun_start(job_config)
