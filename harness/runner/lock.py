"""One writer per shard file: `shards/shard-000i-of-000n.lock`, held by a job for its whole run.

A lock is a small JSON file (host, pid, the pid's start time, when, a random token) that appears at its
final name complete, by `os.link` from a temporary file: the link fails if the name exists, on local disks
and on NFS alike, so two processes never both take a free lock, and a reader never sees half a lock.

A lock is stale, and taken over, when its owner is gone:
* on this host: its pid is not running, or runs a different process (another start time: the pid was reused);
* on another host: its file was not refreshed for `stale_s()` seconds (`HARNESS_LOCK_STALE_S`, default 120).
  The owner refreshes the mtime of its locks every `stale_s() / 8` seconds from a daemon thread, whatever
  the job is doing (a model loading, a batch waiting), so only a dead or frozen process lets a lock go stale.
  This assumes the hosts' clocks agree to well within that threshold (NTP).

Taking over is race safe: the right to replace a stale lock with token T is the file `<lock>.break-T`,
created exclusively; its holder checks the lock still holds T and is still stale, then renames its own
lock over it (the lock file never disappears on the way, so nobody can take it "free" meanwhile), then
removes `break-T`. Only a taker that dies in those few milliseconds leaves `break-T` behind; after
`BREAK_STALE_S` it is removed, and only two takers racing at that very moment could then both win.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, ShardBusy

log = logging.getLogger(__name__)

STALE_ENV = "HARNESS_LOCK_STALE_S"
STALE_S = 120.0  # another host's lock not refreshed for this long belongs to a dead or frozen process
BREAK_STALE_S = 30.0  # a takeover takes milliseconds: a break file this old was left by a taker that died
TRIES = 5  # rounds of (take, or judge and take over) before giving up on a lock others keep changing


def stale_s() -> float:
    """The staleness threshold for other hosts' locks: `HARNESS_LOCK_STALE_S` seconds, else STALE_S."""
    raw = os.environ.get(STALE_ENV, "")
    try:
        value = float(raw) if raw else STALE_S
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{STALE_ENV}={raw!r} is not a positive number of seconds (default {STALE_S:g})")
    return value


@contextlib.contextmanager
def hold(paths: Sequence[Path]) -> Iterator[list[ShardLock]]:
    """Take every lock in `paths` (ShardBusy, with nothing taken, if one is held by a live process), keep
    them fresh while the block runs, release them when it ends, however it ends."""
    every_s = stale_s() / 8
    locks: list[ShardLock] = []
    try:
        for path in paths:
            locks.append(ShardLock.take(Path(path)))
        with _Heartbeat(locks, every_s):
            yield locks
    finally:
        for lock in reversed(locks):
            lock.release()


@dataclass(frozen=True)
class ShardLock:
    """A lock this process holds (`take`); `release` removes it if it is still this process's."""

    path: Path
    token: str

    @classmethod
    def take(cls, path: Path) -> ShardLock:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        mine = path.with_name(f"{path.name}.{token}.tmp")
        mine.write_text(json.dumps(_owner(token)))
        try:
            for _ in range(TRIES):
                try:
                    os.link(mine, path)
                    return cls(path, token)
                except FileExistsError:
                    pass
                holder = _read(path)
                if holder is None:  # released between our two looks
                    continue
                why = _stale(holder)
                if why is None:
                    raise ShardBusy(_busy_message(path, holder))
                if _take_over(path, holder, mine, why):
                    return cls(path, token)
                time.sleep(0.05)
            raise ShardBusy(f"{path}: other processes kept taking this lock over; run the job again")
        finally:
            mine.unlink(missing_ok=True)

    def refresh(self) -> None:
        """Touch the lock, so other hosts see its owner alive."""
        try:
            os.utime(self.path)
        except FileNotFoundError:
            log.error(
                "%s: this job's lock was removed while it runs; another process may now write the shard", self.path
            )

    def release(self) -> None:
        holder = _read(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        elif holder is not None:
            log.error(
                "%s: this job's lock was taken over by %s pid %s while it ran (judged stale: raise %s?)",
                self.path,
                holder.get("host"),
                holder.get("pid"),
                STALE_ENV,
            )


class _Heartbeat:
    """A daemon thread that refreshes the locks every `every_s` seconds until the block ends."""

    def __init__(self, locks: Sequence[ShardLock], every_s: float) -> None:
        self._locks, self._every_s = locks, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shard-lock-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        if self._locks:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            for lock in self._locks:
                lock.refresh()


@dataclass(frozen=True)
class _Holder:
    """A lock file as found: its content (empty when unreadable) and its age."""

    content: dict[str, Any]
    age_s: float
    identity: str  # the token, or the inode of a lock whose content is unreadable

    def get(self, key: str) -> Any:
        return self.content.get(key)


def _take_over(path: Path, holder: _Holder, mine: Path, why: str) -> bool:
    """Replace the stale lock `holder` with ours; False when someone else got there first."""
    breaker = path.with_name(f"{path.name}.break-{holder.identity}")
    try:
        os.close(os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        try:
            if time.time() - breaker.stat().st_mtime > BREAK_STALE_S:
                breaker.unlink(missing_ok=True)  # its taker died mid-way; the next round tries again
        except FileNotFoundError:
            pass
        return False
    try:
        now = _read(path)
        if now is None or now.identity != holder.identity or _stale(now) is None:
            return False  # replaced or released meanwhile, or its owner showed a sign of life
        log.warning(
            "%s: taking over the lock of %s pid %s (since %s): %s",
            path,
            now.get("host"),
            now.get("pid"),
            now.get("started"),
            why,
        )
        os.rename(mine, path)
        return True
    finally:
        breaker.unlink(missing_ok=True)


def _stale(holder: _Holder) -> str | None:
    """Why the holder is gone, or None while it may still be writing."""
    pid, host = holder.get("pid"), holder.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        if not running(pid):
            return f"process {pid} is not running"
        if holder.get("pid_start") not in (None, _start_time(pid)):
            return f"pid {pid} now belongs to another process"
        return None
    limit = stale_s()
    if holder.age_s > limit:
        return f"not refreshed for {holder.age_s:.0f} s (more than {STALE_ENV}={limit:g})"
    return None


def _busy_message(path: Path, holder: _Holder) -> str:
    shard = path.with_suffix(".jsonl")
    who = f"{holder.get('host') or 'an unknown host'} pid {holder.get('pid')}, since {holder.get('started')}"
    if holder.get("host") == socket.gethostname():
        what_to_do = f"wait for it to finish, or stop it (kill {holder.get('pid')}); rerunning then resumes"
    else:
        what_to_do = (
            f"wait for it to finish or stop it there; if that process is gone, remove {path} (a lock not "
            f"refreshed for {stale_s():g} s, {STALE_ENV}, is taken over by itself)"
        )
    return (
        f"{shard}: another process is writing this shard: {who} (lock {path}, refreshed {holder.age_s:.0f} s ago). "
        f"Two writers would duplicate its records: {what_to_do}"
    )


def _owner(token: str) -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_start": _start_time(pid),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "token": token,
    }


def _read(path: Path) -> _Holder | None:
    """The lock at `path`, or None when there is none."""
    try:
        stat = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        content = json.loads(text)
    except ValueError:
        content = None
    if not isinstance(content, dict):
        content = {}
    identity = content.get("token") if isinstance(content.get("token"), str) else f"inode{stat.st_ino}"
    return _Holder(content, time.time() - stat.st_mtime, "".join(c for c in identity if c.isalnum()))


def running(pid: int) -> bool:
    """Whether a process of this host runs under `pid` (a zombie has exited)."""
    stat = _proc_stat(pid)
    if stat is not None:
        return stat[0] not in ("Z", "X")  # a zombie has exited: only its parent has not collected it yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot), to tell a reused pid apart; None off Linux."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[19]  # field 22 of proc(5) stat


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from its third field on (state, ppid, ...); None where there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
