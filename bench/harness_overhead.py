"""Harness overhead: queries per second through the whole path (decode, simulator, system,
reference backend at zero modelled latency, records on disk, summary), the share of that wall
time spent decoding video (CPU seconds of the reader threads) and inside the backend's
generate() (wall seconds, summed over calls; overlapping under concurrency).
Run: `make bench` (or `python bench/harness_overhead.py`).

The dataset is the default synthetic benchmark; it is generated before timing starts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from harness.benchmarks.base import DATASETS
from harness.config import load_job, register
from harness.runner.job import run_job

CONF = Path(__file__).resolve().parents[1] / "conf"


def measure(overrides: list[str], out_dir: Path) -> dict[str, float]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["run.progress=false", *overrides])
    job, run, shard = load_job(cfg)
    DATASETS.build(job.dataset).load()  # generate outside the timed part
    started = time.perf_counter()
    result = run_job(job, run, shard, out_dir)
    wall = time.perf_counter() - started
    backend_s = result.summary["latency_s"] * result.summary["n"]  # wall time inside generate()
    return {
        "queries": result.new,
        "model_calls": result.model_calls,
        "wall_s": round(wall, 3),
        "queries_per_s": round(result.new / wall, 1),
        "calls_per_s": round(result.model_calls / wall, 1),
        "decode_s": round(result.decode_s, 3),
        "decode_share": round(result.decode_s / wall, 3),
        "backend_s": round(backend_s, 3),
        "backend_share": round(backend_s / wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/harness_overhead.json"))
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. dataset.videos=12")
    args = parser.parse_args()
    register()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scheduler in ("force_s1", "force_s2"):
            for concurrency in (1, 4):
                name = f"{scheduler}, concurrency {concurrency}"
                overrides = [f"scheduler={scheduler}", f"run.concurrency={concurrency}", *args.overrides]
                rows[name] = measure(overrides, Path(tmp) / name.replace(", ", "-").replace(" ", ""))
                print(f"{name:28s} {json.dumps(rows[name])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    args.out.write_text(json.dumps({"machine": machine, "overrides": args.overrides, "results": rows}, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
