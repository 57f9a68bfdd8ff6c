"""SIGTERM and SIGINT (preemption, Ctrl-C) while a job's asyncio loop runs: the job stops cleanly.

The first signal cancels the job's main task, so the runner's `finally` blocks run: shard writers close (every
record on disk is a whole line), backends close (vLLM servers and engines shut down in `aclose`); `run` then
raises Interrupted and the runner marks no shard done. A second signal while stopping goes to the handler that
was there before (by default SIGTERM ends the process at once and SIGINT raises KeyboardInterrupt).

Handlers are installed only in the main thread, only while the loop runs, and never over a signal that is
ignored (a background or nohup run) nor over SIGTERM under submitit: submitit ignores SIGTERM on purpose and
requeues a preempted or timed-out job on its own signal (SIGUSR2), raising SystemExit in the job, which
unwinds the same `finally` blocks. A handler installed on top of ours while the loop runs (vllm_server's,
which stops its servers on SIGTERM, then calls the handler it found) keeps working: ours cancels the job when
called, and once the loop is over passes signals on to the handler that was there before it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

from harness.errors import Interrupted

log = logging.getLogger(__name__)

T = TypeVar("T")
SIGNALS = (signal.SIGTERM, signal.SIGINT)
SUBMITIT_ENV = "SUBMITIT_EXECUTOR"  # set by submitit in the processes it runs jobs in
_RECEIVED: list[int] = []  # signals that interrupted a job of this process: it is being asked to stop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`; SIGTERM or SIGINT cancels it and raises Interrupted once it has unwound."""
    guard = _Guard()
    with guard:
        try:
            result = asyncio.run(guard.watch(main))
        except asyncio.CancelledError:
            if guard.signum is None:
                raise
        except Exception as e:  # e.g. a backend whose server the signal stopped first
            if guard.signum is None:
                raise
            raise Interrupted(guard.signum) from e
    if guard.signum is not None:
        raise Interrupted(guard.signum)
    return result


def received() -> int | None:
    """The signal that interrupted a job of this process, if one did: the process should start nothing more."""
    return _RECEIVED[-1] if _RECEIVED else None


class _Guard:
    """Our handler for SIGNALS while the block runs; `watch` wraps the main coroutine so it can be cancelled."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}  # the handler each signal had before ours
        self._active = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None

    async def watch(self, main: Coroutine[Any, Any, T]) -> T:
        if self.signum is not None:  # the signal came before the loop started
            main.close()
            raise asyncio.CancelledError
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        try:
            return await main
        finally:
            self._task = None

    def __enter__(self) -> _Guard:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set there; a launcher thread's job dies the default way
        for signum in SIGNALS:
            current = signal.getsignal(signum)
            if current in (signal.SIG_IGN, None) or (signum == signal.SIGTERM and os.environ.get(SUBMITIT_ENV)):
                continue
            self._previous[signum] = current
            signal.signal(signum, self._handle)
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous)
            # else a handler installed on top of ours calls ours, which now passes the signal on

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self._active or self.signum is not None:
            if self._active:
                log.warning("%s again while stopping: exiting at once", name)
            _pass_on(self._previous[signum], signum, frame)
            return
        self.signum = signum
        _RECEIVED.append(signum)
        log.warning(
            "%s: stopping the job cleanly (queries in flight are dropped, records on disk are kept, rerunning the "
            "same command resumes); send %s again to exit at once",
            name,
            name,
        )
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)  # runs as a loop callback: cancellation at the next await


def _pass_on(previous: Any, signum: int, frame: FrameType | None) -> None:
    """Do what `previous` (a handler, SIG_DFL) does with the signal."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
