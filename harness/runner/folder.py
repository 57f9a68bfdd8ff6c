"""A job folder's bookkeeping beside its records: the records already there, the config it was written
under (another config is refused), the manifest (versions, spending) and the summary files."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from analysis.summary import ERROR_POLICY, markdown, table_headers, table_row
from harness.budget import Budget
from harness.config import Job, RunConfig
from harness.errors import ConfigError
from harness.records import ResultRecord
from harness.runner import store


def existing_records(shards_dir: Path, retry_errors: bool, mine: Collection[str] = ()) -> dict[str, ResultRecord]:
    """Every record of the job folder by query id, whatever shard count wrote it. With retry_errors, error
    records are dropped from the files this job holds (`mine`, by stem) or nobody holds (no lock file); a shard
    another process holds keeps its errors, and they are not retried here."""
    found: dict[str, ResultRecord] = {}
    for path in sorted(shards_dir.glob("shard-*.jsonl")):
        records = store.load_records(path)
        free = path.stem in mine or not path.with_suffix(".lock").exists()
        if retry_errors and free and any(r.has_error for r in records):
            records = [r for r in records if not r.has_error]
            store.rewrite(path, records)
            path.with_suffix(".done").unlink(missing_ok=True)
        found.update((r.query_id, r) for r in records)
    return found


def refuse_other_config(out_dir: Path, job: Job, config_hash: str) -> None:
    manifest_path = out_dir / "manifest.json"
    if not manifest_path.exists():
        return
    previous = json.loads(manifest_path.read_text()).get("config_hash")
    if previous == config_hash:
        return
    saved_path = out_dir / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text()) if saved_path.exists() else {}
    changes = _differences(saved or {}, job.semantic())
    shown = "; ".join(changes[:5]) + (" ..." if len(changes) > 5 else "")
    raise ConfigError(
        f"{out_dir}: its records were written with config hash {previous}, this run has {config_hash} "
        f"({shown or 'the saved config.yaml is missing'}). Mixing them would corrupt the results: "
        f"start fresh with `rm -r {out_dir}`, or keep them and pick another run.name=..."
    )


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def new_manifest(out_dir: Path, config_hash: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("dualstream-harness", "hydra-core", "omegaconf", "av", "numpy", "opencv-python-headless"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    manifest = {"config_hash": config_hash, "versions": versions, "git_commit": _git_commit(), "started": now()}
    store.write_json(out_dir / "manifest.json", manifest)
    return manifest


def budget_note(run: RunConfig, budget: Budget, unasked: int) -> dict[str, Any] | None:
    """The manifest's record of a budget stop (None: the budget, if any, was not reached)."""
    if not budget.reached:
        return None
    return {"budget_usd": run.budget_usd, "spent_usd_total": round(budget.total_usd, 6), "unasked": unasked}


def spent_before(out_dir: Path) -> float | None:
    """What earlier runs into this folder paid (their manifest); None where no manifest says."""
    try:
        value = json.loads((out_dir / "manifest.json").read_text()).get("spent_usd_total")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


def write_summary(
    out_dir: Path, label: str, config_hash: str, summary: dict[str, Any], tasks: tuple[str, ...], robust: bool
) -> None:
    store.write_json(out_dir / "summary.json", {"job": label, "config_hash": config_hash, **summary})
    table = markdown(table_headers(tasks, robust), [table_row(label, "done", summary, tasks, robust)])
    calls = (
        f"{summary['model_calls']} model calls ({summary['cached_calls']} served from the response cache), "
        f"${summary['cost_usd']:.4f} at the configured prices."
    )
    (out_dir / "summary.md").write_text(
        f"{table}\n\nAccuracy in %; {ERROR_POLICY}; overall = mean of the families.\n{calls}\n"
    )


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
