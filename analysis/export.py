"""`python -m analysis export`: a job folder's records as a benchmark's official results file.

Only I/O and dispatch live here; what the official format holds is the adapter's business
(`to_official_results` in the benchmark's module). The dataset is rebuilt from the job's own
config.yaml, so relative data paths resolve against the current directory, as they did for the run.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import yaml

from harness.benchmarks import DATASETS
from harness.errors import DataError
from harness.runner import store

# benchmark -> module with `to_official_results(samples, records) -> dict` (official results format out)
EXPORTERS = {
    "ovo_bench": "harness.benchmarks.ovo_bench",
    "streamingbench": "harness.benchmarks.streamingbench",
}


def export(benchmark: str, run_dir: Path, out: Path) -> dict:
    """Write the official results JSON of the job in `run_dir` to `out`; returns what was written."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise DataError(f"{run_dir}: no config.yaml, not a job folder (outputs/<run.name>/<job>/)")
    node = (yaml.safe_load(config_path.read_text()) or {}).get("dataset")
    if not isinstance(node, dict) or node.get("name") != benchmark:
        name = node.get("name") if isinstance(node, dict) else None
        raise DataError(f"{config_path}: the job ran dataset {name!r}, not {benchmark!r}")
    samples = DATASETS.build(DATASETS.parse(node)).load()
    exporter = importlib.import_module(EXPORTERS[benchmark])
    results = exporter.to_official_results(samples, store.read_job(run_dir))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    return results
