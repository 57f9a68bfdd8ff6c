"""SIGTERM and Ctrl-C stop a job cleanly: exit 143 / 130, whole records kept, no shard marked done, no lock
left, the manifest says so, and the same command then finishes with one record per query. A second signal
exits at once; vllm_server's own SIGTERM handler and submitit's keep working."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.benchmarks.base import DATASETS
from harness.records import ResultRecord
from harness.runner import store
from harness.runner.interrupt import SUBMITIT_ENV
from tests.helpers import ROOT, SMALL_DATA, compose_job, run_sweep

pytestmark = pytest.mark.slow

WAIT_S = 120


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _args(data_root: Path, *extra: str) -> list[str]:
    # the reference backend really waits its modelled latency: a job lasts long enough to be interrupted
    return [f"dataset.root={data_root}", *SMALL_DATA, "run.progress=false", "backend.sleep=true", *extra]


def _interrupt_once_recording(args: list[str], cwd: Path, signum: int) -> tuple[int, str]:
    """run_sweep.py with `args`, sent `signum` once a record is on disk; its exit status and stderr."""
    command = [sys.executable, str(ROOT / "run_sweep.py"), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    log = cwd / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + WAIT_S
        while not any(store.read_records(p) for p in (cwd / "outputs").glob("**/shards/*.jsonl")):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no record within the time limit"
            time.sleep(0.1)
        process.send_signal(signum)
        return process.wait(WAIT_S), log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _lines_are_whole_records(job_dir: Path) -> int:
    count = 0
    for path in (job_dir / "shards").glob("*.jsonl"):
        text = path.read_text()
        assert text == "" or text.endswith("\n"), f"{path}: torn last line"
        for line in text.splitlines():
            ResultRecord.from_json(line)
            count += 1
    return count


def test_sigterm_stops_the_job_cleanly_and_the_same_command_finishes_it(data_root, tmp_path):
    args = _args(data_root, "run.name=term")
    code, stderr = _interrupt_once_recording(args, tmp_path, signal.SIGTERM)
    assert code == 143, stderr[-3000:]
    assert "Interrupted (SIGTERM)" in stderr and "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    (job_dir,) = (tmp_path / "outputs" / "term").iterdir()
    kept = _lines_are_whole_records(job_dir)
    assert kept >= 1
    assert not list((job_dir / "shards").glob("*.done")), "an interrupted shard is not done"
    assert not list((job_dir / "shards").glob("*.lock*")), "its locks were released"
    manifest = json.loads((job_dir / "manifest.json").read_text())
    assert manifest["interrupted"] == "SIGTERM" and manifest["new"] == kept and "ended" in manifest
    assert not (job_dir / "summary.json").exists(), "no summary of a run that did not end"

    finished = run_sweep(*args, cwd=tmp_path, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    job, _, _ = compose_job(data_root)
    queries = {q.id for s in DATASETS.build(job.dataset).load() for q in s.queries}
    counts = Counter(r.query_id for r in store.read_job(job_dir))
    assert set(counts) == queries and set(counts.values()) == {1}
    assert json.loads((job_dir / "manifest.json").read_text())["interrupted"] is None
    assert len(list((job_dir / "shards").glob("*.done"))) == 4 and not list((job_dir / "shards").glob("*.lock*"))


def test_ctrl_c_exits_130_with_whole_records_and_no_lock(data_root, tmp_path):
    code, stderr = _interrupt_once_recording(_args(data_root, "run.name=ctrlc"), tmp_path, signal.SIGINT)
    assert code == 130, stderr[-3000:]
    assert "Interrupted (SIGINT)" in stderr and "KeyboardInterrupt" not in stderr
    (job_dir,) = (tmp_path / "outputs" / "ctrlc").iterdir()
    assert _lines_are_whole_records(job_dir) >= 1
    assert not list((job_dir / "shards").glob("*.done")) and not list((job_dir / "shards").glob("*.lock*"))
    assert json.loads((job_dir / "manifest.json").read_text())["interrupted"] == "SIGINT"


def test_an_interrupted_sweep_marks_the_job_failed_and_starts_no_other(data_root, tmp_path):
    args = ["-m", *_args(data_root, "run.name=sweep", "router=recent,uniform")]
    code, stderr = _interrupt_once_recording(args, tmp_path, signal.SIGTERM)
    assert code == 143, stderr[-3000:]
    assert "Interrupted (SIGTERM)" in stderr
    jobs = sorted(p for p in (tmp_path / "outputs" / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))
    first = next(j for j in jobs if "recent" in j.name)
    status = json.loads((first / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("Interrupted: SIGTERM received")
    assert not [p for j in jobs if j != first for p in j.glob("shards/*.jsonl")], "no later job ran"


def test_a_second_signal_while_stopping_exits_at_once(tmp_path):
    script = """
import asyncio
from harness.runner import interrupt

async def main():
    try:
        print("ready", flush=True)
        await asyncio.sleep(60)
    finally:
        print("unwinding", flush=True)
        await asyncio.sleep(60)  # a cleanup that hangs

interrupt.run(main())
"""
    with _Script(script, tmp_path) as child:
        assert child.line() == "ready"
        child.process.send_signal(signal.SIGTERM)
        assert child.line() == "unwinding"
        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(10) == -signal.SIGTERM


def test_vllm_servers_stop_handler_and_ours_both_run(tmp_path):
    script = """
import asyncio, signal, time
from backends import vllm_server
from harness.errors import Interrupted
from harness.runner import interrupt

async def job():
    vllm_server.on_exit(lambda: print("servers stopped", flush=True))  # what starting a server does
    print("ready", flush=True)
    try:
        await asyncio.sleep(60)
    finally:
        print("unwound", flush=True)

try:
    interrupt.run(job())
except Interrupted as e:
    print("interrupted", e.exit_code, flush=True)
print("idle", flush=True)
time.sleep(60)  # between jobs: vllm_server's handler, then the default action
"""
    with _Script(script, tmp_path) as child:
        assert child.line() == "ready"
        child.process.send_signal(signal.SIGTERM)
        for line in ("servers stopped", "unwound", "interrupted 143", "idle"):
            assert child.line() == line
        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(10) == -signal.SIGTERM
        assert [child.line(), child.line()] == ["servers stopped", None]


@pytest.mark.parametrize(("submitit", "sigterm"), [("", "ours"), ("slurm", "default")])
def test_handlers_are_ours_only_while_the_loop_runs_and_sigterm_is_left_to_submitit(tmp_path, submitit, sigterm):
    script = """
import asyncio, signal
from harness.runner import interrupt

def name(handler):
    if handler is signal.SIG_DFL:
        return "default"
    return "ours" if getattr(handler, "__self__", None).__class__.__name__ == "_Guard" else str(handler)

async def job():
    print(name(signal.getsignal(signal.SIGTERM)), name(signal.getsignal(signal.SIGINT)), flush=True)

interrupt.run(job())
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""
    with _Script(script, tmp_path, {SUBMITIT_ENV: submitit}) as child:
        assert [child.line(), child.line(), child.line()] == [f"{sigterm} ours", "True True", None]


class _Script:
    """Python code in a child process whose output lines are read with a time limit; killed if still running."""

    def __init__(self, code: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        if not environ.get(SUBMITIT_ENV):
            environ.pop(SUBMITIT_ENV, None)
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=cwd, env=environ, stdout=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def line(self, timeout_s: float = 30) -> str | None:
        """The next line (None at the end of the output)."""
        return self._lines.get(timeout=timeout_s)

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def __enter__(self) -> _Script:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
