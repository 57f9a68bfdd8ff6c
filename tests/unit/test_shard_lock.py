"""Shard locks: one winner among racing processes, stale locks (dead pid, reused pid, silent host) taken over,
a live one refused with who holds it, released however the job ends, refreshed while held."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.errors import ConfigError, ShardBusy
from harness.runner import lock

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60


# one contender: says it is ready, waits for the start file, takes the lock, writes the outcome, holds it until told
CONTENDER = """
import json, os, sys, time
from pathlib import Path
from harness.errors import ShardBusy
from harness.runner import lock
path, flags = Path(sys.argv[1]), Path(sys.argv[2])
(flags / f"{os.getpid()}.ready").touch()
while not (flags / "go").exists():
    time.sleep(0.001)
try:
    with lock.hold([path]):
        (flags / f"{os.getpid()}.out").write_text(json.dumps(["won", os.getpid(), ""]))
        while not (flags / "release").exists():
            time.sleep(0.01)
except ShardBusy as e:
    (flags / f"{os.getpid()}.out").write_text(json.dumps(["busy", os.getpid(), str(e)]))
"""


def _race(path: Path, n: int, flags: Path) -> list[tuple[str, int, str]]:
    """n processes take the same lock at once; their outcomes (the winner has released it since)."""
    flags.mkdir()
    command = [sys.executable, "-c", CONTENDER, str(path), str(flags)]
    processes = [subprocess.Popen(command, cwd=ROOT) for _ in range(n)]
    try:
        _wait_for(lambda: len(list(flags.glob("*.ready"))) == n, processes)
        (flags / "go").touch()
        _wait_for(lambda: len(list(flags.glob("*.out"))) == n, processes)
        (flags / "release").touch()
        assert [p.wait(TIMEOUT_S) for p in processes] == [0] * n
        return [tuple(json.loads(f.read_text())) for f in flags.glob("*.out")]  # type: ignore[misc]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait(5)


def _wait_for(condition: Callable[[], bool], processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, "the contenders did not get there in time"
        assert all(p.poll() in (None, 0) for p in processes), "a contender died"  # 0: told busy, and done
        time.sleep(0.01)


def _write_lock(path: Path, **content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": None, "started": "then", "token": "abc"}
    path.write_text(json.dumps({**owner, **content}))


def test_of_processes_racing_for_a_shard_exactly_one_wins_and_the_others_are_told_who(tmp_path):
    path = tmp_path / "shards" / "shard-0001-of-0004.lock"
    outcomes = _race(path, 4, tmp_path / "flags")
    winners = [pid for kind, pid, _ in outcomes if kind == "won"]
    assert len(winners) == 1
    for kind, _, message in outcomes:
        if kind == "busy":
            assert f"{tmp_path / 'shards' / 'shard-0001-of-0004.jsonl'}: another process is writing" in message
            assert f"{socket.gethostname()} pid {winners[0]}, since " in message
            assert f"kill {winners[0]}" in message
    assert not path.exists(), "the winner released its lock on exit"
    assert sorted(p.name for p in path.parent.iterdir()) == [], "no temporary or break file is left"


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    path = tmp_path / "shard-0000-of-0001.lock"
    code = "import os; from pathlib import Path; from harness.runner.lock import ShardLock; "
    code += f"ShardLock.take(Path({str(path)!r})); os._exit(0)"  # dies holding it
    dead = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=TIMEOUT_S, check=True)
    assert dead.returncode == 0 and path.exists()
    left = json.loads(path.read_text())
    assert left["host"] == socket.gethostname() and left["pid"] != os.getpid()

    with lock.hold([path]) as (held,):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert json.loads(path.read_text())["token"] == held.token
    assert f"pid {left['pid']}" in caplog.text and "is not running" in caplog.text
    assert not path.exists()


def test_several_processes_racing_to_take_over_one_stale_lock_leave_one_owner(tmp_path):
    path = tmp_path / "shard-0002-of-0004.lock"
    _write_lock(path, pid=_dead_pid())
    outcomes = _race(path, 4, tmp_path / "flags")
    assert sorted(kind for kind, _, _ in outcomes) == ["busy", "busy", "busy", "won"]
    assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flags"], "no temporary or break file is left"


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    path = tmp_path / "shard-0000-of-0001.lock"
    _write_lock(path, pid=os.getpid(), pid_start="1")  # this pid, but a process that started at another time
    with lock.hold([path]):
        assert json.loads(path.read_text())["pid_start"] == lock._start_time(os.getpid()) != "1"


def test_a_live_lock_is_refused_before_anything_is_taken(tmp_path):
    free, busy = tmp_path / "shard-0000-of-0002.lock", tmp_path / "shard-0001-of-0002.lock"
    _write_lock(busy, pid=os.getppid(), pid_start=lock._start_time(os.getppid()), started="2025-01-02T03:04:05")
    before = busy.read_text()
    busy_message = r"shard-0001-of-0002\.jsonl: another process is writing this shard"
    with pytest.raises(ShardBusy, match=busy_message) as e, lock.hold([free, busy]):
        pytest.fail("the job must not start")
    assert f"pid {os.getppid()}, since 2025-01-02T03:04:05" in str(e.value)
    assert not free.exists(), "the lock taken before the busy one is given back"
    assert busy.read_text() == before


def test_another_hosts_lock_is_busy_while_fresh_and_taken_over_once_silent(tmp_path, monkeypatch):
    monkeypatch.setenv(lock.STALE_ENV, "60")
    path = tmp_path / "shard-0000-of-0001.lock"
    _write_lock(path, host="node-17.cluster", pid=4242)
    with pytest.raises(ShardBusy) as e:
        lock.ShardLock.take(path)
    message = str(e.value)
    assert "node-17.cluster pid 4242" in message and f"remove {path}" in message and "60 s" in message

    os.utime(path, (time.time() - 61, time.time() - 61))
    taken = lock.ShardLock.take(path)
    assert json.loads(path.read_text())["host"] == socket.gethostname()
    taken.release()
    assert not path.exists()


def test_locks_are_released_when_the_job_raises(tmp_path):
    paths = [tmp_path / f"shard-000{i}-of-0002.lock" for i in range(2)]
    with pytest.raises(RuntimeError, match="boom"), lock.hold(paths):
        assert all(p.exists() for p in paths)
        raise RuntimeError("boom")
    assert not any(p.exists() for p in paths)


def test_held_locks_are_refreshed_so_other_hosts_see_the_owner_alive(tmp_path, monkeypatch):
    monkeypatch.setenv(lock.STALE_ENV, "0.8")  # refreshed every 0.1 s
    path = tmp_path / "shard-0000-of-0001.lock"
    with lock.hold([path]):
        os.utime(path, (1, 1))
        deadline = time.monotonic() + 10
        while path.stat().st_mtime < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.time() - path.stat().st_mtime < 5


def test_a_release_never_removes_a_lock_that_is_no_longer_its_own(tmp_path, caplog):
    path = tmp_path / "shard-0000-of-0001.lock"
    held = lock.ShardLock.take(path)
    _write_lock(path, host="node-3", pid=77, token="other")  # taken over meanwhile (judged stale)
    held.release()
    assert json.loads(path.read_text())["token"] == "other"
    assert "taken over by node-3 pid 77" in caplog.text


def test_a_bad_staleness_setting_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(lock.STALE_ENV, "soon")
    with (
        pytest.raises(ConfigError, match=f"{lock.STALE_ENV}='soon' is not a positive number"),
        lock.hold([tmp_path / "x.lock"]),
    ):
        pass
    assert not (tmp_path / "x.lock").exists()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(TIMEOUT_S)
    return process.pid
