"""Compose the real configs (conf/) for in-process jobs, with a small synthetic dataset; play one stream through
the real system with a test backend."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from harness.config import Job, RunConfig, ShardConfig, load_job, register
from harness.memory import MEMORIES
from harness.records import Query, StreamSample, Truth
from harness.routers import ROUTERS
from harness.scheduler import SCHEDULERS
from harness.simulator import play
from harness.system import Answer, Span, StreamSystem, SystemConfig
from harness.video import FrameReader

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# small enough for seconds per job, big enough for every task family
SMALL_DATA = ["dataset.videos=3", "dataset.duration_s=40"]


def compose_job(data_root: Path, *overrides: str) -> tuple[Job, RunConfig, ShardConfig]:
    """The real config with `data_root`; the small synthetic knobs unless another dataset is chosen; no response
    cache unless a test names one (the default file in the working directory would carry replies across tests)."""
    register()
    small = [] if any(o.startswith("dataset=") for o in overrides) else SMALL_DATA
    if not any(o.startswith("run.response_cache=") for o in overrides):
        small = [*small, "run.response_cache=null"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"dataset.root={data_root}", *small, "run.progress=false"])
    return load_job(cfg)


def run_sweep(
    *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """run_sweep.py in a subprocess, as a user runs it (`env`: variables set on top of this process's)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run_sweep.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Prompts:
    """The few benchmark methods a stream needs: the question is the prompt; a trigger fires on "yes"."""

    def prompt(self, query: Query) -> str:
        return query.text

    def fired(self, text: str) -> bool:
        return "yes" in text.lower()


def play_stream(
    video: Path, backend: Any, queries: list[Query], scheduler: dict[str, Any] | None = None, **system: Any
) -> tuple[dict[str, Answer], StreamSystem]:
    """`queries` on `video` played by the real system (whole-stream window memory, uniform router, `scheduler`,
    default force_s2) on one backend for both routes; every outcome must be an answer."""
    cfg = SystemConfig(fps=2.0, max_side=64, **system)
    memory = MEMORIES.build(MEMORIES.parse({"name": "window", "window_s": 1000.0}))
    router = ROUTERS.build(ROUTERS.parse({"name": "uniform"}))
    policy = SCHEDULERS.build(SCHEDULERS.parse(scheduler or {"name": "force_s2"}))
    stream = StreamSystem(cfg, {"S1": backend, "S2": backend}, policy, router, memory, Prompts())
    sample = StreamSample("s", str(video), 8.0, tuple(queries), {q.id: Truth(q.id, "A") for q in queries})
    answers: dict[str, Answer] = {}

    async def emit(query: Query, outcome: Answer | Exception) -> None:
        assert isinstance(outcome, Answer), outcome
        answers[query.id] = outcome

    async def run() -> None:
        reader = FrameReader(str(video), cfg.fps, cfg.max_side)
        try:
            await play(sample, reader, stream, {}, emit, poll_s=1.0, official_span=cfg.span == Span.official)
        finally:
            reader.close()

    asyncio.run(run())
    return answers, stream
