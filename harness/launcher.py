"""Whether a job may run under the Hydra launcher that runs it (conf/launcher/ profiles).

The joblib launcher (launcher=local_parallel) runs jobs in reused worker processes: GPU memory a job leaves
allocated stays held for the next job of that worker, and vLLM cannot start its engine processes from a loky
worker. So a job that puts a model on a GPU refuses it before anything is loaded.
"""

from __future__ import annotations

from harness.config import Job
from harness.errors import ConfigError
from harness.registry import Choice

JOBLIB = "JoblibLauncher"  # the end of the joblib launcher's `_target_`


def check_launcher(job: Job, launcher_target: str) -> None:
    """Raises ConfigError when the launcher (its `_target_`) is joblib and the job uses a GPU."""
    if not launcher_target.endswith(JOBLIB):
        return
    users = gpu_users(job)
    if users:
        raise ConfigError(
            f"launcher=local_parallel runs jobs in reused worker processes, for API and CPU backends only, and this "
            f"job uses a GPU ({'; '.join(users)}). Run it with launcher=local (one job at a time in this process), "
            "launcher=ray (one GPU per job on this machine) or launcher=slurm"
        )


def gpu_users(job: Job) -> list[str]:
    """The parts of a job that put a model on a GPU, as `key=option (why)` for the message."""
    backends: dict[str, Choice] = {"backend": job.backend}
    for route, choice in job.route_backends().items():
        if choice != job.backend:  # a route's own backend (backend@system.s1.backend=...)
            backends[f"system.{route.lower()}.backend"] = choice
    if (scheduler := job.scheduler_backend()) is not None:
        backends["scheduler.backend"] = scheduler
    if job.judge.backend is not None:
        backends["judge.backend"] = job.judge_backend()
    users = [f"{key}={c.name}{why}" for key, c in backends.items() if (why := _backend_gpu(c))]
    device = getattr(job.encoder.config, "device", "cpu")
    if device != "cpu":
        users.append(f"encoder={job.encoder.name} (encoder.device={device})")
    return users


def _backend_gpu(choice: Choice) -> str:
    """Why a backend uses a GPU ("" when it does not)."""
    config = choice.config
    if choice.name == "vllm":
        return " (an in-process vLLM engine)"
    if choice.name == "vllm_server" and not getattr(config, "url", ""):
        return " (a vLLM server started by the job)"
    if choice.name == "hf" and getattr(config, "device_map", "cpu") != "cpu":
        return f" (backend.device_map={config.device_map})"
    return ""
