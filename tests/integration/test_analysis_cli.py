"""`python -m analysis` on a real sweep (run_sweep.py, 2 routers x 2 schedulers on the synthetic benchmark):
completeness of a whole run, then of a run with a killed shard, an errored shard and a missing job (and the
printed command really resumes a cell); tables, ablation, efficiency, plots and a paper spec from the records."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from analysis.__main__ import main
from harness.records import ResultRecord
from tests.helpers import ROOT, run_sweep

pytestmark = pytest.mark.slow
AXES = ["router=recent,uniform", "scheduler=force_s1,force_s2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("sweep")
    args = ["-m", *AXES, "dataset.videos=2", "dataset.duration_s=30", "run.name=t", f"dataset.root={cwd / 'data'}",
            "run.progress=false"]  # fmt: skip
    result = run_sweep(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


@pytest.fixture
def in_sweep(sweep, monkeypatch) -> Path:
    monkeypatch.chdir(sweep)
    return sweep


def _job(root: Path, router: str, scheduler: str) -> Path:
    (found,) = [p for p in root.iterdir() if f"router={router},scheduler={scheduler}" in p.name]
    return found


def test_a_finished_sweep_is_complete_and_its_table_is_the_run_summary(in_sweep, capsys):
    assert main(["completeness", "outputs/t"]) == 0
    out = capsys.readouterr().out
    assert "4 cells (router x scheduler): 4 done, 0 partial, 0 failed, 0 missing" in out
    assert out.count("done 22/22") == 4
    assert main(["table", "outputs/t", "--format", "csv", "--levels", "overall"]) == 0
    rows = [line.split(",") for line in capsys.readouterr().out.splitlines()[1:]]
    for router, scheduler, overall, n, fail in rows:
        summary = json.loads((_job(in_sweep / "outputs" / "t", router, scheduler) / "summary.json").read_text())
        assert float(overall) == pytest.approx(summary["overall"]) and (n, fail) == ("22", "0")


def test_killed_errored_and_missing_cells_are_found_and_resumed(sweep, tmp_path, monkeypatch, capsys):
    shutil.copytree(sweep / "outputs" / "t", tmp_path / "outputs" / "t")
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "outputs" / "t"
    killed = _job(root, "recent", "force_s2")
    shard = max((killed / "shards").glob("*.jsonl"), key=lambda p: p.stat().st_size)
    lines = shard.read_bytes().splitlines(keepends=True)
    shard.write_bytes(b"".join(lines[:4]) + lines[4][:40])  # killed mid-line
    shard.with_suffix(".done").unlink()
    errored = _job(root, "uniform", "force_s1")
    victim = max((errored / "shards").glob("*.jsonl"), key=lambda p: p.stat().st_size)
    records = [ResultRecord.from_json(line) for line in victim.read_text().splitlines()]
    failed = [replace(r, error="RateLimitError: 429 after 6 tries", score=None) if i < 2 else r
              for i, r in enumerate(records)]  # fmt: skip
    victim.write_text("".join(r.to_json() + "\n" for r in failed))
    shutil.rmtree(_job(root, "uniform", "force_s2"))

    assert main(["completeness", "outputs/t"]) == 1
    out = capsys.readouterr().out
    assert "1 done, 1 partial, 1 failed, 1 missing" in out
    kept = 22 - len(lines) + 4  # the other shard's records and the 4 whole lines before the cut
    assert f"- router=recent scheduler=force_s2: partial {kept}/22" in out
    index = int(shard.stem.split("-")[1])
    assert f"shard {index} of 4: partial (4 of {len(lines)}, no .done marker)" in out
    assert "- router=uniform scheduler=force_s1: failed 22/22 (2 rate_limit)" in out
    assert "- router=uniform scheduler=force_s2: missing" in out
    commands = [line.split("resume: ", 1)[1] for line in out.splitlines() if "resume: " in line]
    assert len(commands) == 3
    assert any("run.retry_errors=true" in c and "router=uniform" in c and "scheduler=force_s1" in c for c in commands)
    assert "Or resume every cell at once" in out and "python run_sweep.py -m router=recent,uniform" in out

    assert main(["table", "outputs/t"]) == 1  # refuses the incomplete cells
    assert "--allow-incomplete" in capsys.readouterr().err
    assert main(["table", "outputs/t", "--allow-incomplete", "--levels", "overall"]) == 0
    assert "†" in capsys.readouterr().out

    resume = next(c for c in commands if "scheduler=force_s2" in c and "router=recent" in c)
    args = shlex.split(resume)[2:]  # python run_sweep.py <overrides>
    result = run_sweep(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{kept} records reused, {22 - kept} new" in result.stdout + result.stderr
    main(["completeness", "outputs/t", "--json"])
    report = json.loads(capsys.readouterr().out)
    states = {(c["labels"]["router.name"], c["labels"]["scheduler.name"]): c["state"] for c in report["cells"]}
    assert states == {("recent", "force_s1"): "done", ("recent", "force_s2"): "done",
                      ("uniform", "force_s1"): "failed", ("uniform", "force_s2"): "missing"}  # fmt: skip


def test_every_output_from_the_records(in_sweep, tmp_path, capsys):
    for fmt in ("md", "latex", "csv"):
        assert main(["table", "outputs/t", "--format", fmt, "-o", str(tmp_path / f"t.{fmt}")]) == 0
    assert "\\toprule" in (tmp_path / "t.latex").read_text()
    assert main(["ablation", "outputs/t", "--axis", "router", "--baseline", "recent", "--levels", "tasks,overall"]) == 0
    out = capsys.readouterr().out
    assert "Δ overall" in out and "baseline" in out and "paired permutation test" in out
    assert main(["efficiency", "outputs/t"]) == 0
    assert "lat p95 s" in capsys.readouterr().out
    for kind in ("accuracy-vs-latency", "accuracy-vs-cost", "memory-growth"):
        assert main(["plot", "outputs/t", "--kind", kind, "-o", str(tmp_path / "fig" / kind)]) == 0
        assert (tmp_path / "fig" / f"{kind}.png").stat().st_size > 1000
    first = (tmp_path / "fig" / "memory-growth.pdf").read_bytes()
    main(["plot", "outputs/t", "--kind", "memory-growth", "-o", str(tmp_path / "fig" / "memory-growth")])
    assert (tmp_path / "fig" / "memory-growth.pdf").read_bytes() == first  # no creation date: same bytes
    spec = tmp_path / "tables.yaml"
    spec.write_text("tables:\n  - {name: main}\n  - {name: routers, kind: ablation, axis: router}\n")
    for out_dir in ("p1", "p2"):
        assert main(["paper", "outputs/t", "--spec", str(spec), "-o", str(tmp_path / out_dir)]) == 0
    for name in ("main.tex", "main.md", "routers.tex", "routers.md"):
        assert (tmp_path / "p1" / name).read_bytes() == (tmp_path / "p2" / name).read_bytes()
    assert main(["ablation", "outputs/t", "--axis", "colour"]) == 2
    assert "'colour' is not an axis of this sweep; its axes are router, scheduler" in capsys.readouterr().err


def test_the_module_entry_point_keeps_score_and_export(in_sweep):
    from analysis import cli, plots

    assert cli.PLOT_KINDS == plots.KINDS
    result = subprocess.run(
        [sys.executable, "-m", "analysis", "--help"], cwd=in_sweep, capture_output=True, text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for command in ("score", "export", "completeness", "table", "ablation", "efficiency", "plot", "paper"):
        assert command in result.stdout
