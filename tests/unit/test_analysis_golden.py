"""Every output format against golden files, from a small run written in the test (real composed configs,
records chosen so that every number is fixed: scores, failures of three causes, latencies, tokens, cost).

Regenerate the golden files after an intended change, then review the diff:
    ANALYSIS_GOLDEN_UPDATE=1 .venv/bin/python -m pytest tests/unit/test_analysis_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from analysis import tables
from analysis.ablation import ablation_table
from analysis.efficiency import efficiency_table
from analysis.load import load
from analysis.paper import render_spec
from analysis.results import Incomplete, results_table
from tests.fixtures.analysis_records import record, write_job
from tests.helpers import compose_job

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "analysis_golden"
UPDATE = os.environ.get("ANALYSIS_GOLDEN_UPDATE") == "1"
TASKS = ("realtime", "clue", "reasoning", "sequential", "proactive")
CONFIGS = [("recent", "force_s1"), ("recent", "force_s2"), ("uniform", "force_s1"), ("uniform", "force_s2")]


def _records(number: int, router: str, scheduler: str) -> list:
    """4 videos x 5 tasks x 2 queries; accuracy grows with the config number; a few failures of known causes."""
    rng = np.random.default_rng(100 + number)
    out = []
    for v in range(4):
        for t, task in enumerate(TASKS):
            for q in range(2):
                i = (v * len(TASKS) + t) * 2 + q
                sample, query = f"syn-{v:03d}", f"syn-{v:03d}-q{t}{q}"
                score = float(rng.random() < 0.45 + 0.12 * number)
                route = "S2" if scheduler == "force_s2" or (i % 3 == 0 and number == 0) else "S1"
                extra = (
                    dict(kind="proactive", subscores={"time": score, "content": score}) if task == "proactive" else {}
                )
                out.append(record(sample, query, task, score, route=route, time_s=float(2 + 3 * t + q),
                                  latency_s=0.05 + 0.01 * (i % 7) + 0.1 * (route == "S2"),
                                  modelled_latency_s=0.2 + 0.5 * (route == "S2"), tokens_in=500 + 10 * i,
                                  tokens_out=3, visual_tokens=448, n_calls=1, cost_usd=0.0001 * (1 + number),
                                  frame_times_s=tuple(float(k) for k in range(8 if route == "S1" else 16)),
                                  memory_frames=4 * (2 + 3 * t + q), memory_bytes=230400 * (2 + 3 * t + q),
                                  **extra))  # fmt: skip
    if (router, scheduler) == ("uniform", "force_s2"):
        out[3] = record(out[3].sample_id, out[3].query_id, out[3].task, None, error="RateLimitError: 429 after 6 tries")
        out[17] = record(
            out[17].sample_id,
            out[17].query_id,
            out[17].task,
            None,
            error="BackendError: backend=hf: prompt of 9000 tokens exceeds the model's context of 8192",
        )
    if (router, scheduler) == ("recent", "force_s1"):
        out[8] = record(out[8].sample_id, out[8].query_id, out[8].task, 0.0, response="maybe", parsed=None)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("golden") / "outputs" / "golden"
    data = root.parent.parent / "data"
    for number, (router, scheduler) in enumerate(CONFIGS):
        job, _, _ = compose_job(data, f"router={router}", f"scheduler={scheduler}")
        overrides = [f"router={router}", f"scheduler={scheduler}", "run.name=golden"]
        write_job(root / f"router={router},scheduler={scheduler}", job.semantic(), _records(number, router, scheduler),
                  overrides=overrides)  # fmt: skip
    return root


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with ANALYSIS_GOLDEN_UPDATE=1 to write it"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file (see the module docstring)"


@pytest.mark.parametrize("fmt,suffix", [("md", "md"), ("latex", "tex"), ("csv", "csv")])
def test_main_table_matches_golden(run_dir, fmt, suffix):
    table = results_table(load(run_dir), caption="Synthetic benchmark, four configurations.", label="tab:main")
    _check(f"table.{suffix}", tables.render(table, fmt))


def test_main_table_numbers_and_failures_are_the_records(run_dir):
    run = load(run_dir)
    table = results_table(run)
    row = next(r for r in table.rows if r.labels == ("uniform", "force_s2"))
    names = [c.name for c in table.columns]
    cells = dict(zip(names, row.cells, strict=True))
    mine = run.records[run.records["job"] == "router=uniform,scheduler=force_s2"]
    by_task = mine.assign(s=mine["score"].fillna(0.0)).groupby("task", observed=True)["s"].mean() * 100
    assert cells["clue"].value == pytest.approx(by_task["clue"])  # errors count as wrong (synthetic's rule)
    assert cells["overall"].value == pytest.approx(by_task.mean())
    assert (cells["n"].value, cells["fail"].value) == (40, 2)
    assert "3 of 160 records failed (1 rate_limit, 1 context_overflow, 1 unparseable)" in table.notes[0]


def test_ablation_and_efficiency_match_golden(run_dir):
    run = load(run_dir)
    ablation = ablation_table(run, "router", baseline="recent", levels=("categories", "overall"), resamples=500,
                              permutations=500)  # fmt: skip
    _check("ablation.md", tables.render(ablation, "md"))
    _check("ablation.tex", tables.render(ablation, "latex"))
    _check("efficiency.md", tables.render(efficiency_table(run), "md"))


def test_failure_policy_changes_the_denominator(run_dir):
    run = load(run_dir)
    wrong = results_table(run, levels=("overall",), policy="wrong")
    excluded = results_table(run, levels=("overall",), policy="excluded")
    pick = {r.labels: r.cells[0].value for r in wrong.rows}
    left_out = {r.labels: r.cells[0].value for r in excluded.rows}
    assert pick[("recent", "force_s1")] == left_out[("recent", "force_s1")]  # no error there (unparseable is scored)
    assert pick[("uniform", "force_s2")] < left_out[("uniform", "force_s2")]
    assert "excluded from the denominators (--failures)" in excluded.notes[0]


def test_an_unfinished_shard_is_refused_then_marked(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "golden"
    shutil.copytree(run_dir, copy)
    next((copy / "router=recent,scheduler=force_s2" / "shards").glob("*.done")).unlink()
    with pytest.raises(Incomplete, match="router=recent,scheduler=force_s2"):
        results_table(load(copy))
    table = results_table(load(copy), allow_incomplete=True)
    marked = [r for r in table.rows if any(c.mark for c in r.cells)]
    assert [r.labels for r in marked] == [("recent", "force_s2")]
    assert "† incomplete" in tables.render(table, "md") and "$^\\dagger$" in tables.render(table, "latex")


def test_paper_spec_renders_the_same_bytes_twice(run_dir, tmp_path):
    spec = tmp_path / "tables.yaml"
    spec.write_text(
        f"runs: [{run_dir}]\n"
        "tables:\n"
        "  - {name: main, rows: [router, scheduler], levels: [overall], caption: Main., label: tab:main}\n"
        "  - {name: routers, kind: ablation, axis: router, baseline: recent, resamples: 200, permutations: 200}\n"
        "  - {name: s1_only, where: {scheduler: force_s1}, levels: [tasks]}\n"
        "  - {name: cost, kind: efficiency}\n"
    )
    first = render_spec(spec, tmp_path / "a", [])
    second = render_spec(spec, tmp_path / "b", [])
    assert [p.name for p in first] == [p.name for p in second] == [
        "main.tex", "main.md", "routers.tex", "routers.md", "s1_only.tex", "s1_only.md", "cost.tex", "cost.md"
    ]  # fmt: skip
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    main = (tmp_path / "a" / "main.md").read_text()
    expected = results_table(load(run_dir), levels=("overall",), caption="Main.", label="tab:main")
    assert main == tables.render(expected, "md")
    assert "force_s2" not in (tmp_path / "a" / "s1_only.md").read_text()


def test_paper_spec_errors_name_the_table_and_key(run_dir, tmp_path):
    spec = tmp_path / "tables.yaml"
    spec.write_text(f"runs: [{run_dir}]\ntables:\n  - {{name: x, kind: ablation, axis: router, colour: red}}\n")
    with pytest.raises(ValueError, match=r"tables\[0\] \(x\): unknown keys \['colour'\]"):
        render_spec(spec, tmp_path / "out", [])
    spec.write_text(f"runs: [{run_dir}]\ntables:\n  - {{name: x, kind: ablation, axis: colour}}\n")
    with pytest.raises(ValueError, match="'colour' is not an axis of this sweep; its axes are router, scheduler"):
        render_spec(spec, tmp_path / "out", [])
