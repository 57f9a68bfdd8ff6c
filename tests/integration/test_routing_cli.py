"""`python -m analysis routing` on real runs of the synthetic benchmark (reference backend): policies replayed on a
`scheduler=both` run, with the table and the figure; the classifier replayed from a model trained on that run; and
a force_s1 run completed by the rerun the command prints, until it gives the `both` run's numbers."""

from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path

import pytest

from analysis.__main__ import main
from harness.train_scheduler import main as train
from tests.helpers import run_sweep

pytestmark = pytest.mark.slow
SMALL = ["dataset.videos=2", "dataset.duration_s=30", "run.progress=false", "run.response_cache=null"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """outputs/both (scheduler=both) and outputs/s1 (scheduler=force_s1) on the same videos."""
    cwd = tmp_path_factory.mktemp("routing")
    for name, scheduler in (("both", "both"), ("s1", "force_s1")):
        result = run_sweep(
            f"scheduler={scheduler}", f"run.name={name}", f"dataset.root={cwd / 'data'}", *SMALL, cwd=cwd
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return cwd


@pytest.fixture
def in_runs(runs, monkeypatch) -> Path:
    monkeypatch.chdir(runs)
    return runs


def _rows(capsys) -> dict[str, dict[str, str]]:
    return {row["policy"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}


def test_policies_replayed_on_a_both_run_with_table_and_figure(in_runs, capsys):
    rules = in_runs / "past_to_s2.yaml"
    rules.write_text("name: rule\nrules:\n  - {keywords: [earlier, so far, first], route: S2}\ndefault: S1\n")
    policies = ["force_s1", "force_s2", "oracle", "recorded", "semantic", str(rules), "threshold:confidence"]
    args = [f"--policy={p}" for p in policies]
    assert main(["routing", "simulate", "outputs/both", *args, "--format", "csv", "--plot", "fig/routing"]) == 0
    out = capsys.readouterr().out
    assert "wrote fig/routing.png" in out and (in_runs / "fig" / "routing.pdf").stat().st_size > 1000
    rows = {row["policy"]: row for row in csv.DictReader(io.StringIO(out.split("\n", 2)[2]))}
    (job,) = (in_runs / "outputs" / "both").iterdir()
    summary = json.loads((job / "summary.json").read_text())
    overall = {p: float(rows[p]["overall"]) for p in rows}
    assert overall["force_s2"] == pytest.approx(summary["overall"], abs=1e-4)  # the run kept S2's answers
    assert overall["recorded"] == overall["force_s2"] and rows["recorded"]["S2 %"] == "100"
    assert overall["oracle"] >= max(overall["force_s1"], overall["force_s2"])
    assert {rows[p]["n"] for p in rows} == {"22"} and {rows[p]["missing"] for p in rows} == {"0"}
    assert float(rows["force_s1"]["S2 %"]) == 0 and 0 < float(rows["semantic"]["S2 %"]) < 100
    sweep = [p for p in rows if p.startswith("threshold:confidence@")]
    assert sweep and all(rows[p]["front"] for p in sweep)

    assert main(["routing", "misroutes", "outputs/both", "--policy", "force_s1"]) == 0
    out = capsys.readouterr().out
    assert "| all " in out and "S1 taken, S2 better" in out and "reason: forced" in out
    assert main(["routing", "simulate", "outputs/both", "--policy", "llm"]) == 2
    assert "cannot be replayed offline" in capsys.readouterr().err


def test_the_classifier_is_replayed_from_its_model_file(in_runs, capsys):
    model = in_runs / "classifier.json"
    assert train(["outputs/both", "-o", str(model), "--quiet"]) == 0
    capsys.readouterr()
    policies = ["--policy", "classifier", "--policy", "threshold:classifier@0.5", "--policy", "threshold:classifier"]
    assert main(["routing", "simulate", "outputs/both", *policies, "--model", str(model), "--format", "csv"]) == 0
    rows = _rows(capsys)
    same = ("overall", "S2 %", "$/query")  # conf/scheduler/classifier.yaml: P(S2) > 0.5 goes to S2
    assert [rows["classifier"][c] for c in same] == [rows["threshold:classifier@0.5"][c] for c in same]
    assert any(p.startswith("threshold:classifier@") for p in rows if p != "threshold:classifier@0.5")


def test_a_single_route_run_completed_by_its_rerun_gives_the_both_runs_numbers(in_runs, capsys):
    assert main(["routing", "simulate", "outputs/s1", "--policy", "oracle", "--format", "csv"]) == 0
    assert _rows(capsys)["oracle"]["missing"] == "22"  # no query has S2's answer yet
    assert main(["routing", "rerun", "outputs/s1", "--policy", "oracle"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(
        "22 queries need S2 under oracle; wrote " + str(next(Path("outputs/s1").iterdir()) / "rerun-oracle-S2.txt")
    )
    command = shlex.split(lines[1])
    assert command[:2] == ["python", "run_sweep.py"] and "scheduler=force_s2" in command
    result = run_sweep(*command[2:], cwd=in_runs)
    assert result.returncode == 0, result.stderr[-3000:]

    policies = ["--policy", "oracle", "--policy", "force_s2", "--policy", "threshold:confidence@0.5"]
    assert main(["routing", "simulate", "outputs/s1", "--with", "outputs/s1-rerun", *policies, "--format", "csv"]) == 0
    completed = _rows(capsys)
    assert main(["routing", "simulate", "outputs/both", *policies, "--format", "csv"]) == 0
    both = _rows(capsys)
    for policy in ("oracle", "force_s2"):
        assert completed[policy]["missing"] == "0"
        for column in ("realtime", "clue", "reasoning", "sequential", "proactive", "overall", "S2 %"):
            assert completed[policy][column] == both[policy][column], (policy, column)
    # a force_s1 run asks S1 for no confidence, and an unstated one escalates (the cascade's rule): all go to S2
    assert completed["threshold:confidence@0.5"]["S2 %"] == "100" != both["threshold:confidence@0.5"]["S2 %"]
