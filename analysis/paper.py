"""A declarative spec of a paper's tables, rendered into a folder of .tex and .md files.

    runs: [outputs/main]              # optional: the runs every table reads (default: the command line's)
    tables:
      - name: main                    # file stem: main.tex and main.md
        kind: results                 # results (default), ablation or efficiency
        runs: [outputs/main]          # optional, this table only
        where: {scheduler: rule}      # optional: only jobs with these axis values
        rows: [router, memory]        # results: row axes; cols: column-group axes
        cols: [dataset]
        levels: [tasks, categories, overall]
        metric: official              # or robust
        failures: official            # or wrong / excluded
        caption: Main results.
        label: tab:main
        allow_incomplete: false
      - name: routers
        kind: ablation
        axis: router                  # ablation: the axis, its baseline and the resampling
        baseline: uniform
        resamples: 2000
        permutations: 5000
        seed: 0

Run paths are relative to the current directory, as on the command line. The output is a pure function of
the spec and the records: no dates, fixed seeds, so the same spec on the same records gives the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from analysis import axes as axes_
from analysis.ablation import ablation_table
from analysis.efficiency import efficiency_table
from analysis.load import Run, load
from analysis.results import results_table
from analysis.tables import Table, latex, markdown

KINDS = ("results", "ablation", "efficiency")
COMMON = {"name", "kind", "runs", "where", "caption", "label", "allow_incomplete", "failures", "metric"}
KEYS = {
    "results": COMMON | {"rows", "cols", "levels"},
    "ablation": COMMON | {"axis", "baseline", "levels", "resamples", "permutations", "seed"},
    "efficiency": COMMON - {"failures", "metric"},
}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def render_spec(spec_path: Path, out_dir: Path, runs: Sequence[Path], allow_incomplete: bool = False) -> list[Path]:
    """Write <name>.tex and <name>.md for every table of the spec; returns the files written."""
    spec = _read(spec_path)
    default_runs = [Path(p) for p in spec.get("runs") or runs]
    loaded: dict[tuple[str, ...], Run] = {}
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, entry in enumerate(spec["tables"]):
        where = f"{spec_path}, tables[{index}]"
        entry = _check(entry, where)
        table_runs = [Path(p) for p in entry.get("runs") or default_runs]
        if not table_runs:
            raise ValueError(f"{where}: no runs: give OUTPUTS/RUN on the command line or `runs:` in the spec")
        key = tuple(str(p) for p in table_runs)
        if key not in loaded:
            loaded[key] = load(table_runs)
        run = _where(loaded[key], entry.get("where") or {}, where)
        try:
            table = _table(run, entry, allow_incomplete or bool(entry.get("allow_incomplete")))
        except ValueError as e:
            raise ValueError(f"{where} ({entry['name']}): {e}") from None
        for suffix, text in ((".tex", latex(table)), (".md", markdown(table))):
            path = out_dir / f"{entry['name']}{suffix}"
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def _table(run: Run, entry: dict[str, Any], allow_incomplete: bool) -> Table:
    kind = entry.get("kind", "results")
    common = {"caption": entry.get("caption", ""), "label": entry.get("label", "")}
    if kind == "efficiency":
        return efficiency_table(run, **common)
    scoring = {"metric": entry.get("metric", "official"), "policy": entry.get("failures", "official")}
    if kind == "ablation":
        return ablation_table(
            run,
            entry["axis"],
            entry.get("baseline"),
            levels=tuple(entry.get("levels") or ("overall",)),
            resamples=int(entry.get("resamples", 2000)),
            permutations=int(entry.get("permutations", 5000)),
            seed=int(entry.get("seed", 0)),
            allow_incomplete=allow_incomplete,
            **scoring,
            **common,
        )
    return results_table(
        run,
        entry.get("rows"),
        entry.get("cols"),
        tuple(entry.get("levels") or ("tasks", "categories", "overall")),
        allow_incomplete=allow_incomplete,
        **scoring,
        **common,
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"{path}: cannot read the spec ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("tables"), list) or not spec["tables"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty list `tables:` (see analysis/paper.py)")
    if unknown := set(spec) - {"runs", "tables"}:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}; allowed: runs, tables")
    names = [t.get("name") for t in spec["tables"] if isinstance(t, dict)]
    if repeated := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"{path}: table names {repeated} repeat; each names its own files")
    return spec


def _check(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping (name, kind, ...), got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"{where}: `name` must be a file stem (letters, digits, _ . -), got {name!r}")
    kind = entry.get("kind", "results")
    if kind not in KINDS:
        raise ValueError(f"{where} ({name}): kind {kind!r}: choose one of {', '.join(KINDS)}")
    if unknown := set(entry) - KEYS[kind]:
        raise ValueError(f"{where} ({name}): unknown keys {sorted(unknown)} for kind {kind}; allowed: "
                         f"{', '.join(sorted(KEYS[kind]))}")  # fmt: skip
    if kind == "ablation" and "axis" not in entry:
        raise ValueError(f"{where} ({name}): an ablation needs `axis` (e.g. router)")
    return entry


def _where(run: Run, where: dict[str, Any], place: str) -> Run:
    """The jobs whose config matches every `axis: value` (axis by group name or key; a value or a list)."""
    if not where:
        return run
    keep = []
    for job in run.jobs.values():
        ok = True
        for axis, wanted in where.items():
            key = axis if axis in job.config else f"{axis}.name"
            if key not in job.config:
                raise ValueError(f"{place}: where: {axis!r} is not a config key of job {job.id}")
            allowed = {axes_.value_text(v) for v in (wanted if isinstance(wanted, list) else [wanted])}
            ok &= axes_.value_text(job.config[key]) in allowed
        if ok:
            keep.append(job.id)
    if not keep:
        raise ValueError(f"{place}: where: {where} matches no job")
    return run.subset(keep)
