"""python -m harness.benchmarks validate dataset=<name> [overrides]: check a dataset before a sweep.

Composes conf/ with the Hydra overrides (as run_sweep.py does), loads the dataset and checks that every video
decodes, every query time lies inside its video and the counts per task match the published ones.
Exit code: 0 no errors (warnings allowed), 1 errors in the data, 2 a config problem.

python -m harness.benchmarks validate dataset=ovo_bench dataset.root=/data/ovo_bench
python -m harness.benchmarks validate dataset=synthetic dataset.videos=2 dataset.duration_s=30
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from harness.benchmarks.base import DATASETS
from harness.benchmarks.validate import CAP, validate
from harness.config import register
from harness.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        dataset = DATASETS.parse(_compose(args.overrides).dataset)  # the data only: no judge or backend needed
        report = validate(DATASETS.build(dataset), dataset.name, progress=not args.quiet)
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        print(f"validate: config problem: {e}", file=sys.stderr)
        return 2
    print("\n".join(report.lines(args.cap)))
    return 0 if report.ok else 1


def _compose(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.benchmarks", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check a dataset's videos, query times and counts")
    check.add_argument("overrides", nargs="*", help="Hydra overrides of conf/, e.g. dataset=ovo_bench dataset.root=…")
    check.add_argument("--cap", type=int, default=CAP, help=f"lines printed per kind (default {CAP})")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


if __name__ == "__main__":
    sys.exit(main())
