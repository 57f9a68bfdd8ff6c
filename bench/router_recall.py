"""Router quality on a finished sweep: accuracy on the memory-bound families (clue, reasoning)
and recall of the evidence frames, from the records and the annotation's evidence times.

Recall of a query: the share of its evidence intervals (when the evidence is on screen) that at
least one frame shown to the model falls into; averaged over clue and reasoning queries.

    python run_sweep.py +experiment=router_comparison
    python bench/router_recall.py outputs/router_comparison
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import fmean

import yaml

from analysis.summary import markdown
from harness.benchmarks.base import DATASETS
from harness.runner import store

FAMILIES = ("clue", "reasoning")


def evidence_recall(frame_times_s: tuple[float, ...], evidence_s: tuple[float, ...], tolerance_s: float) -> float:
    """Share of (start, end) evidence intervals hit by at least one frame time."""
    intervals = list(zip(evidence_s[::2], evidence_s[1::2], strict=True))
    if not intervals:
        return float("nan")
    hit = [any(start - tolerance_s <= t <= end + tolerance_s for t in frame_times_s) for start, end in intervals]
    return sum(hit) / len(intervals)


def job_rows(job_dir: Path, tolerance_s: float) -> dict[str, float | int | str]:
    config = yaml.safe_load((job_dir / "config.yaml").read_text())
    benchmark = DATASETS.build(DATASETS.parse(config["dataset"]))
    truths = {qid: t for s in benchmark.load() for qid, t in s.truths.items()}
    records = store.read_job(job_dir)
    row: dict[str, float | int | str] = {"job": job_dir.name, "router": config["router"]["name"]}
    for family in FAMILIES:
        mine = [r for r in records if r.task == family]
        row[f"{family} acc %"] = round(100 * fmean(r.score or 0.0 for r in mine), 1) if mine else "-"
    recalls = [
        evidence_recall(r.frame_times_s, truths[r.query_id].evidence_s, tolerance_s)
        for r in records
        if r.task in FAMILIES and r.error is None and truths[r.query_id].evidence_s
    ]
    row["evidence recall %"] = round(100 * fmean(recalls), 1) if recalls else "-"
    row["frames shown"] = round(fmean(len(r.frame_times_s) for r in records if r.task in FAMILIES), 1)
    row["n"] = sum(r.task in FAMILIES for r in records)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--tolerance-s", type=float, default=0.0, help="count a frame this close to an interval")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    rows = [job_rows(d, args.tolerance_s) for d in sorted(args.sweep.iterdir()) if (d / "config.yaml").exists()]
    headers = list(rows[0]) if rows else ["job"]
    print(markdown(headers, [[str(r[h]) for h in headers] for r in rows]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
