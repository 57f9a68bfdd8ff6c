"""One Hydra job = one dataset x backend x router x memory x scheduler x system combination.

python run_sweep.py -m router=recent,uniform scheduler=force_s1,force_s2 run.name=demo
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.config import load_job, register
from harness.runner.job import run_job

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    job, run, shard = load_job(cfg)
    result = run_job(job, run, shard, Path(HydraConfig.get().runtime.output_dir))
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        print((result.out_dir / "summary.md").read_text())
    return result.summary["overall"]


if __name__ == "__main__":
    main()
