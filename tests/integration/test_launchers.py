"""Sweeps on the launcher profiles (conf/launcher/), as a user runs them: jobs fail or are killed, then
`python -m harness status` names what is unfinished and the one command it prints completes the sweep, with
exactly one record per query. Every process a test starts is killed by pid at the end (its whole session)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness.benchmarks import DATASETS
from harness.config import load_job, register
from harness.launcher import check_launcher
from harness.runner import store
from harness.status import check
from tests.helpers import CONF, ROOT, SMALL_DATA, compose_job

pytestmark = pytest.mark.slow

SWEEP_S = 420  # one sweep, at most (2 shared cores: each job process imports torch)
ENV = {"PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", "HARNESS_HEARTBEAT_S": "1"}
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
HAS_RAY = all(importlib.util.find_spec(m) for m in ("ray", "hydra_plugins.hydra_ray_launcher"))


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    """A data disk with the small synthetic benchmark on it (generated once, here)."""
    root = tmp_path_factory.mktemp("disk")
    job, _, _ = compose_job(root / "data")
    DATASETS.build(job.dataset).load()
    return root


@pytest.fixture
def sessions() -> Iterator[list[int]]:
    """Session ids of the sweeps a test starts; every process left in them is killed by pid afterwards."""
    started: list[int] = []
    yield started
    for sid in started:
        for pid in _session_pids(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("launcher", ["submitit_local", "local_parallel"])
def test_a_failed_and_a_killed_job_then_the_status_command_finishes_the_sweep(launcher, disk, tmp_path, sessions):
    mount = tmp_path / "mnt"
    mount.write_text("")  # the second data disk is not mounted: a file where its folder should be
    name = launcher
    # the unmounted cell first: under joblib a killed worker ends the sweep, so its jobs run (and fail) before that
    args = [
        "-m",
        f"launcher={launcher}",
        f"dataset.root={mount / 'data'},{disk / 'data'}",
        *SMALL_DATA,
        "shard.count=2",
        "backend.sleep=true",
        "run.concurrency=1",
        "run.progress=false",
        f"run.name={name}",
    ]
    if launcher == "local_parallel":
        args += ["shard.index=range(0,2)", "hydra.launcher.n_jobs=2"]  # one job per shard, two at once
    sweep = _start(tmp_path, args, sessions)
    killed = _kill_when_recording(tmp_path / "outputs" / name, f"dataset.root={disk / 'data'}", sweep)
    assert sweep.wait(timeout=SWEEP_S) != 0
    _wait_gone(tmp_path / "outputs" / name)

    first = _status(tmp_path, name)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "stale, its process is gone" in first.stdout and f"pid {killed}" in first.stdout
    assert "failed, NotADirectoryError" in first.stdout
    command = _finish_command(first.stdout)
    assert f"launcher={launcher}" in command and "dataset.root=" in command

    mount.unlink()
    mount.symlink_to(disk)  # the disk is mounted now
    finished = _run(tmp_path, command, sessions)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    done = _status(tmp_path, name)
    assert done.returncode == 0, done.stdout
    assert "Finish the sweep" not in done.stdout
    lines = _one_record_per_query(tmp_path / "outputs" / name, disk)

    if launcher == "local_parallel":  # the same command again: every job finds its records and asks nothing
        again = _run(tmp_path, command, sessions)
        assert again.returncode == 0, again.stderr[-3000:]
        assert _one_record_per_query(tmp_path / "outputs" / name, disk) == lines
        assert _status(tmp_path, name).returncode == 0


def test_a_gpu_backend_refuses_local_parallel_with_a_clear_message(tmp_path, sessions):
    args = ["-m", "launcher=local_parallel", "backend=hf", f"backend.model_path={tmp_path / 'model'}",
            f"dataset.root={tmp_path / 'data'}", "run.name=gpu"]  # fmt: skip
    sweep = _start(tmp_path, args, sessions)
    assert sweep.wait(timeout=SWEEP_S) == 1
    report = check(tmp_path / "outputs" / "gpu")
    (shard, *_) = report.cells[0].shards
    assert shard.state == "failed"
    assert (
        "ConfigError: launcher=local_parallel" in shard.detail
        and "backend=hf (backend.device_map=auto)" in shard.detail
    )
    assert not (tmp_path / "data").exists(), "refused before any work"


@pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed: pip install -e '.[ray]' (see README, Scaling out)")
def test_ray_runs_a_two_job_sweep_on_this_machine(disk, tmp_path, sessions):
    args = ["-m", "launcher=ray", "router=recent,uniform", f"dataset.root={disk / 'data'}", *SMALL_DATA,
            "run.progress=false", "run.name=ray", "hydra.launcher.ray.remote.num_gpus=0",
            "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
            "hydra.launcher.ray.init.object_store_memory=100000000"]  # fmt: skip
    sweep = _start(tmp_path, args, sessions)
    assert sweep.wait(timeout=SWEEP_S) == 0
    status = _status(tmp_path, "ray")
    assert status.returncode == 0 and "2 cells" in status.stdout, status.stdout
    _one_record_per_query(tmp_path / "outputs" / "ray", disk)


@pytest.mark.parametrize("profile", sorted(p.stem for p in (CONF / "launcher").glob("*.yaml")))
def test_a_launcher_profile_never_names_the_folder_nor_changes_the_hash(profile):
    plugin = {"local_parallel": "hydra_joblib_launcher", "ray": "hydra_ray_launcher"}.get(profile, "")
    plugin = plugin or ("hydra_submitit_launcher" if "slurm" in profile or "submitit" in profile else "")
    if plugin and importlib.util.find_spec(f"hydra_plugins.{plugin}") is None:
        pytest.skip(f"hydra_plugins.{plugin} is not installed (pyproject.toml extras)")
    register()
    configs = {}
    for choice in ("local", profile):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            configs[choice] = compose("config", overrides=[f"launcher={choice}", "router=recent"],
                                      return_hydra_config=True)  # fmt: skip
    local, chosen = configs["local"], configs[profile]
    assert chosen.hydra.job.override_dirname == local.hydra.job.override_dirname == "router=recent"
    assert load_job(chosen)[0].config_hash() == load_job(local)[0].config_hash()
    assert (chosen.hydra.launcher._target_ == local.hydra.launcher._target_) == (profile == "local")


def test_gpu_backends_refuse_the_joblib_launcher_and_others_pass(tmp_path):
    model = f"backend.model_path={tmp_path}"
    refused = [
        ["backend=hf", model],
        ["backend=vllm", model],
        ["backend=vllm_server", model],  # a server the job starts
        ["backend@system.s2.backend=hf", f"system.s2.backend.model_path={tmp_path}"],  # S2 only
        ["encoder=clip", f"encoder.model_path={tmp_path}", "encoder.device=cuda"],
    ]
    for overrides in refused:
        job, _, _ = compose_job(tmp_path, *overrides)
        with pytest.raises(ValueError, match="launcher=local_parallel .* API and CPU backends only"):
            check_launcher(job, JOBLIB)
        check_launcher(job, "hydra._internal.core_plugins.basic_launcher.BasicLauncher")  # any other launcher
    allowed = [
        ["backend=reference"],
        ["backend=hf", model, "backend.device_map=cpu"],
        ["backend=vllm_server", "backend.model_path=", "backend.url=http://127.0.0.1:9/v1"],
        ["backend=openai"],
    ]
    for overrides in allowed:
        check_launcher(compose_job(tmp_path, *overrides)[0], JOBLIB)


# ---- helpers


def _start(cwd: Path, args: list[str], sessions: list[int]) -> subprocess.Popen[bytes]:
    """run_sweep.py in its own session (its processes are found and killed by that session id)."""
    with (cwd / "sweep.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=cwd,
                                   env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    sessions.append(process.pid)
    return process


def _run(cwd: Path, command: str, sessions: list[int]) -> subprocess.CompletedProcess[str]:
    """The printed command, as typed in the project folder: `python run_sweep.py` is this interpreter and script."""
    here = f"{shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'run_sweep.py'))}"
    process = subprocess.Popen(["bash", "-c", command.replace("python run_sweep.py", here)], cwd=cwd,
                               env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    sessions.append(process.pid)
    out, err = process.communicate(timeout=2 * SWEEP_S)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _status(cwd: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", "status", f"outputs/{name}"], cwd=cwd,
                          env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120)  # fmt: skip


def _finish_command(text: str) -> str:
    lines = text.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("Finish the sweep")) + 1].strip()


def _kill_when_recording(root: Path, marker: str, sweep: subprocess.Popen[bytes]) -> int:
    """SIGKILL (as the out-of-memory killer does) the job of the cell named by `marker` once it has records."""
    deadline = time.monotonic() + SWEEP_S
    while time.monotonic() < deadline and sweep.poll() is None:
        for job_dir, status in _statuses(root):
            running = status.get("status") == "running" and marker in status.get("overrides", [])
            if running and len(store.read_job(job_dir)) >= 2:
                os.kill(int(status["pid"]), signal.SIGKILL)
                return int(status["pid"])
        time.sleep(0.1)
    raise AssertionError(f"no job of {marker} was seen recording (sweep log: {root.parents[1] / 'sweep.log'})")


def _wait_gone(root: Path) -> None:
    """Until no job of the sweep runs any more (submitit leaves the other jobs running when the sweep ends)."""
    deadline = time.monotonic() + SWEEP_S
    while time.monotonic() < deadline:
        pids = [int(s["pid"]) for _, s in _statuses(root) if s.get("status") == "running"]
        if not [p for p in pids if Path(f"/proc/{p}").exists()]:
            return
        time.sleep(0.2)
    raise AssertionError("jobs still running")


def _statuses(root: Path) -> Iterator[tuple[Path, dict]]:
    for path in [*root.glob("*/status.json"), *root.glob("*/status/*.json")]:
        try:
            yield (path.parent if path.name == "status.json" else path.parent.parent), json.loads(path.read_text())
        except (OSError, ValueError):
            continue


def _one_record_per_query(root: Path, disk: Path) -> int:
    """Every cell holds each query of the dataset exactly once; returns the number of lines."""
    job, _, _ = compose_job(disk / "data")
    expected = {q.id for s in DATASETS.build(job.dataset).load() for q in s.queries}
    cells = [p.parent for p in root.glob("*/config.yaml")]
    assert cells
    lines = 0
    for cell in cells:
        counts = Counter(r.query_id for r in store.read_job(cell))
        assert set(counts.values()) == {1}, f"{cell}: a query recorded twice"
        assert set(counts) == expected, f"{cell}: {len(expected - set(counts))} queries not recorded"
        lines += sum(counts.values())
    return lines


def _session_pids(sid: int) -> list[int]:
    """Every process of a session (from /proc), the session leader last."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return sorted(pids, key=lambda p: p == sid)
