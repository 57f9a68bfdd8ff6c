"""Compose the real configs (conf/) for in-process jobs, with a small synthetic dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from harness.config import Job, RunConfig, ShardConfig, load_job, register

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
