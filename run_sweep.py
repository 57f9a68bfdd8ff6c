"""One Hydra job = one dataset x backend x router x memory x scheduler x system combination.

python run_sweep.py -m router=recent,uniform scheduler=force_s1,force_s2 run.name=demo
python run_sweep.py -m ... run.estimate=true     # each job's expected calls, images, tokens and cost; no calls
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.config import load_job, register
from harness.errors import ConfigError, DataError
from harness.runner.job import run_job

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        job, run, shard = load_job(cfg)
        result = run_job(job, run, shard, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, DataError) as e:
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


if __name__ == "__main__":
    main()
