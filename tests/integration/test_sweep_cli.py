"""run_sweep.py as a user runs it: a 2x2 multirun, a rerun that calls no model, SIGKILL and
resume, a failed job shown as failed, config errors that name the key and the choices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.records import ResultRecord
from harness.runner import store
from tests.helpers import ROOT, SMALL_DATA, run_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _args(data_root: Path, *extra: str) -> list[str]:
    return [f"dataset.root={data_root}", *SMALL_DATA, "run.progress=false", *extra]


def _records(job_dir: Path) -> list[ResultRecord]:
    return store.read_job(job_dir)  # read only: the job may be writing a line right now


def test_multirun_prints_one_table_and_a_rerun_calls_no_model(data_root, tmp_path):
    args = ["-m", *_args(data_root, "router=recent,uniform", "scheduler=force_s1,force_s2", "run.name=demo")]
    first = run_sweep(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = json.loads((tmp_path / "outputs" / "demo" / "sweep.json").read_text())
    assert len(sweep["jobs"]) == 4 and {j["status"]["status"] for j in sweep["jobs"]} == {"completed"}
    table = first.stdout[first.stdout.index("| job") :]
    header = table.splitlines()[0]
    for column in ("realtime", "clue", "reasoning", "sequential", "proactive", "overall", "S2 %", "lat model s"):
        assert column in header
    rows = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    assert len(rows) == 4 and all("completed" in r for r in rows)
    s2_share = {r.split("|")[1].strip(): r.split("|")[-5].strip() for r in rows}
    assert {v for k, v in s2_share.items() if "force_s1" in k} == {"0.0"}
    assert {v for k, v in s2_share.items() if "force_s2" in k} == {"100.0"}

    again = run_sweep(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("already recorded: no model called") == 4
    assert again.stdout[again.stdout.index("| job") :] == table


def test_sigkill_mid_run_then_rerun_ends_with_one_record_per_query(data_root, tmp_path):
    args = _args(data_root, "run.name=kill", "backend.sleep=true", "run.concurrency=2")
    command = [sys.executable, str(ROOT / "run_sweep.py"), *args]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum(len(_records(d)) for d in (tmp_path / "outputs").glob("kill/*")) < 6:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    (job_dir,) = (tmp_path / "outputs" / "kill").iterdir()
    partial = len(_records(job_dir))
    assert partial >= 6

    finished = run_sweep(*args, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    counts = Counter(r.query_id for r in _records(job_dir))
    summary = json.loads((job_dir / "summary.json").read_text())
    assert set(counts.values()) == {1} and sum(counts.values()) == summary["n"] > partial
    assert json.loads((job_dir / "manifest.json").read_text())["reused"] >= partial


def test_a_failed_job_is_shown_as_failed_in_the_table(data_root, tmp_path):
    result = run_sweep("-m", *_args(data_root, "dataset.objects=9,0", "run.name=broken"), cwd=tmp_path)
    assert result.returncode == 1
    sweep = json.loads((tmp_path / "outputs" / "broken" / "sweep.json").read_text())
    assert sorted(j["status"]["status"] for j in sweep["jobs"]) == ["completed", "failed"]
    failed_row = next(line for line in result.stdout.splitlines() if "failed:" in line)
    assert "dataset.objects=0" in failed_row and "ConfigError" in failed_row


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("router=unifrom", ["Could not find 'router/unifrom'", "recent", "uniform"]),
        ("router.top_k=3", ["Key 'top_k' not in 'UniformConfig'"]),
        ("scheduler.default=S3", ["Invalid value 'S3'", "S1, S2"]),
        ("run.concurrency=many", ["run.concurrency", "could not be converted to Integer"]),
        ("runs.name=x", ["Key 'runs' not in 'RootConfig'"]),
    ],
)
def test_config_errors_name_the_key_and_the_choices_before_any_work(tmp_path, override, expected):
    result = run_sweep(override, f"dataset.root={tmp_path / 'data'}", cwd=tmp_path)
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr, result.stderr
    assert not (tmp_path / "data").exists(), "nothing was generated or run"


def test_a_job_level_config_error_is_one_clean_message(tmp_path):
    result = run_sweep("shard.index=7", f"dataset.root={tmp_path / 'data'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "ConfigError: shard.index=7 with shard.count=4" in result.stderr
    assert "Traceback" not in result.stderr
