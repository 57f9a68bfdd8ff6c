"""One Hydra job = one dataset x backend x router x memory x scheduler x system combination.

python run_sweep.py -m router=recent,uniform scheduler=force_s1,force_s2 run.name=demo
python run_sweep.py -m ... run.estimate=true     # each job's expected calls, images, tokens and cost; no calls

SIGTERM or Ctrl-C stops a job cleanly (its records are kept) and ends the command with 143 or 130; a sweep starts
no further job. Rerunning the same command resumes.
"""

import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.config import load_job, register
from harness.errors import ConfigError, DataError, Interrupted, ShardBusy
from harness.launcher import check_launcher
from harness.runner import interrupt
from harness.runner.job import run_job

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    signum = interrupt.received()
    if signum is not None:  # an earlier job of this process was interrupted: the sweep ends here
        sys.exit(128 + signum)
    try:
        job, run, shard = load_job(cfg)
        check_launcher(job, HydraConfig.get().launcher._target_)  # local_parallel: no GPU backends
        result = run_job(job, run, shard, Path(HydraConfig.get().runtime.output_dir))
    except Interrupted as e:
        if multirun:
            raise  # the job is marked failed (interrupted); the next one exits at once
        sys.exit(e.exit_code)
    except (ConfigError, DataError, ShardBusy) as e:
        if multirun:
            raise  # the job is marked failed, the sweep goes on and its table shows the error
        print(f"{type(e).__name__}: {e}", file=sys.stderr)  # the message is the whole story: no traceback
        sys.exit(2)
    if result.estimate is not None:
        print(result.estimate.text(result.out_dir.name), flush=True)
        return None
    if not multirun:
        print((result.out_dir / "summary.md").read_text())
    return result.summary["overall"]


def _exit_if_interrupted() -> None:
    """After a signal stopped a job: one line saying so, and the exit status 128 + the signal (130 Ctrl-C,
    143 SIGTERM), also in place of Hydra's 1 for a sweep whose last job was the interrupted one."""
    signum = interrupt.received()
    if signum is not None:
        name = signal.Signals(signum).name
        print(f"Interrupted ({name}): records on disk are kept; rerun the same command to resume.", file=sys.stderr)
        sys.exit(128 + signum)


if __name__ == "__main__":
    try:
        main()
    finally:
        _exit_if_interrupted()
