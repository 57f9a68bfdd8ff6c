"""Offline routing on a hand-written `both` run whose numbers are worked out by hand: each policy's accuracy, S2
share, cost and latency, the threshold sweep's Pareto front, misroutes, and the rerun of a single-route run.

The run: 6 queries, 2 task families (synthetic: overall = mean of the families), both routes answered each.

    query  task      S1 score  S2 score  S1 $ / s      S2 $ / s     S1 confidence  question
    q1     realtime  1         1         0.001 / 0.1   0.010 / 1.0  0.9            What colour is it now?
    q2     realtime  1         0         0.001 / 0.1   0.010 / 1.0  0.8            What shape is on screen now?
    q3     realtime  0         1         0.001 / 0.1   0.010 / 1.0  0.3            Which object appeared earlier?
    q4     clue      0         1         0.002 / 0.2   0.020 / 2.0  0.4            What was shown before the cup?
    q5     clue      0         0         0.002 / 0.2   0.020 / 2.0  0.6            How many cups are there?
    q6     clue      1         1         0.002 / 0.2   0.020 / 2.0  0.7            Where is the cup now?
"""

from __future__ import annotations

import math
import shlex

import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from analysis.routing import load_answers, pareto
from analysis.routing_policies import Policy, parse_policy, simulate
from analysis.routing_reports import Simulated, misroutes_table, rerun, simulate_table
from analysis.tables import markdown
from tests.fixtures.analysis_records import record, write_job

CONFIG = {"dataset": {"name": "synthetic"}, "router": {"name": "uniform"}, "scheduler": {"name": "both", "keep": "S2"}}
QUERIES = [  # id, task, (S1 score, S2 score), S1 confidence, question
    ("q1", "realtime", (1.0, 1.0), 0.9, "What colour is it now?"),
    ("q2", "realtime", (1.0, 0.0), 0.8, "What shape is on screen now?"),
    ("q3", "realtime", (0.0, 1.0), 0.3, "Which object appeared earlier?"),
    ("q4", "clue", (0.0, 1.0), 0.4, "What was shown before the cup?"),
    ("q5", "clue", (0.0, 0.0), 0.6, "How many cups are there?"),
    ("q6", "clue", (1.0, 1.0), 0.7, "Where is the cup now?"),
]
COST = {"realtime": (0.001, 0.010), "clue": (0.002, 0.020)}  # (S1, S2) dollars; latency is 100 x dollars
RULES = {"name": "rule", "default": "S1",
         "rules": [{"task": "clue", "route": "S2"}, {"keywords": ["earlier"], "route": "S2"}]}  # fmt: skip


def _path(score, cost, confidence=None):
    return {"n_calls": 1, "latency_s": 100 * cost, "modelled_latency_s": None, "cost_usd": cost, "tokens_in": 10,
            "tokens_out": 1, "response": "A" if score else "B", "parsed": "A" if score else "B", "score": score,
            "confidence": confidence}  # fmt: skip


def _both_record(query_id, task, scores, confidence, question, sample="v0", time_s=1.0):
    s1 = _path(scores[0], COST[task][0], confidence)
    s2 = _path(scores[1], COST[task][1])
    return record(sample, query_id, task, scores[1], route="S2", route_reason="both: S2 kept", policy="both",
                  question=question, time_s=time_s, features={"memory_frames": 10.0, "since_scene_change_s": None},
                  paths={"S1": s1, "S2": s2}, cost_usd=s1["cost_usd"] + s2["cost_usd"])  # fmt: skip


@pytest.fixture
def both_run(tmp_path):
    records = [_both_record(q, t, s, c, text, time_s=float(i)) for i, (q, t, s, c, text) in enumerate(QUERIES)]
    write_job(tmp_path / "run" / "scheduler=both", CONFIG, records, overrides=["scheduler=both"])
    return tmp_path / "run"


def _one(run, policy):
    (answers,) = load_answers(run)
    (outcome,) = simulate(policy, answers)
    return outcome


@pytest.mark.parametrize(
    ("policy", "realtime", "clue", "s2_share", "cost", "latency"),
    [
        # realtime (1+1+0)/3, clue (0+0+1)/3, overall (66.7+33.3)/2 = 50; $ (3*0.001 + 3*0.002)/6; s (0.3+0.6)/6
        ("force_s1", 200 / 3, 100 / 3, 0 / 6, 0.009 / 6, 0.9 / 6),
        # realtime (1+0+1)/3, clue (1+0+1)/3; $ (3*0.010 + 3*0.020)/6; s (3 + 6)/6
        ("force_s2", 200 / 3, 200 / 3, 6 / 6, 0.090 / 6, 9.0 / 6),
        # q1 tie -> cheaper S1, q2 S1, q3 S2, q4 S2, q5 tie (0, 0) -> S1, q6 tie -> S1: realtime 3/3, clue 2/3;
        # $ 0.001+0.001+0.010 + 0.020+0.002+0.002; s 0.1+0.1+1.0 + 2.0+0.2+0.2
        ("oracle", 300 / 3, 200 / 3, 2 / 6, 0.036 / 6, 3.6 / 6),
        # clue -> S2 (rule 1), q3 "earlier" -> S2 (rule 2), q1 q2 -> S1: realtime 1,1,1; clue 1,0,1;
        # $ 0.001+0.001+0.010 + 3*0.020; s 0.1+0.1+1.0 + 3*2.0
        ("rules", 300 / 3, 200 / 3, 4 / 6, 0.072 / 6, 7.2 / 6),
        # S2 when S1's confidence < 0.5: q3 (0.3), q4 (0.4); scores as the oracle's; pays S1 always (0.009, 0.9 s)
        # and S2 for q3 and q4 (0.010 + 0.020, 1.0 + 2.0 s)
        ("threshold:confidence@0.5", 300 / 3, 200 / 3, 2 / 6, 0.039 / 6, 3.9 / 6),
        # the run kept S2 and, replayed as a policy, pays the kept route only: force_s2's numbers
        ("recorded", 200 / 3, 200 / 3, 6 / 6, 0.090 / 6, 9.0 / 6),
    ],
)
def test_each_policy_scores_pays_and_waits_what_the_hand_arithmetic_says(
    both_run, policy, realtime, clue, s2_share, cost, latency
):
    parsed = Policy("rules", "replay", "rule", node=RULES) if policy == "rules" else parse_policy(policy)
    outcome = _one(both_run, parsed)
    assert (outcome.n, outcome.missing) == (6, 0)
    assert outcome.scores["realtime"] == pytest.approx(realtime)
    assert outcome.scores["clue"] == pytest.approx(clue)
    assert outcome.scores["overall"] == pytest.approx((realtime + clue) / 2)
    assert outcome.s2_share == pytest.approx(s2_share)
    assert outcome.cost_usd == pytest.approx(cost)
    assert outcome.latency_s == pytest.approx(latency)


def test_the_confidence_sweep_keeps_the_pareto_front(both_run):
    (answers,) = load_answers(both_run)
    policy = parse_policy("threshold:confidence")
    outcomes = simulate(policy, answers)
    # θ: -inf, the six confidences, +inf; S2 when the confidence is below θ: escalated in the order q3 q4 q5 q6 q2 q1
    assert [o.theta for o in outcomes] == [-math.inf, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, math.inf]
    assert [round(6 * o.s2_share) for o in outcomes] == [0, 0, 1, 2, 3, 4, 5, 6]
    # q3 -> realtime 100; q4 -> clue 66.7; q5 and q6 change nothing (equal scores); q2 -> realtime 66.7
    expected = [50.0, 50.0, (100 + 100 / 3) / 2, (100 + 200 / 3) / 2, (100 + 200 / 3) / 2, (100 + 200 / 3) / 2,
                200 / 3, 200 / 3]  # fmt: skip
    assert [o.scores["overall"] for o in outcomes] == pytest.approx(expected)
    # cost: S1 always (0.009) plus each escalated query's S2 (q3 0.010, q4 0.020, q5 0.020, ...)
    assert outcomes[3].cost_usd == pytest.approx((0.009 + 0.030) / 6)
    # the front: each point more accurate than every cheaper one; θ=0.3 repeats θ=-inf and is left off
    fronts = Simulated(answers, policy, outcomes).fronts()
    assert fronts == ["S2 %, $", "", "S2 %, $", "S2 %, $", "", "", "", ""]
    table = markdown(simulate_table([Simulated(answers, policy, outcomes)], levels=["overall"]))
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:5]] == [
        "threshold:confidence@-inf", "threshold:confidence@0.4", "threshold:confidence@0.6"]  # fmt: skip
    assert "threshold:confidence@0.7" not in table


def test_pareto_drops_dominated_and_repeated_points():
    x = np.array([0.0, 0.1, 0.1, 0.2, 0.3, 0.3, np.nan])
    y = np.array([50.0, 40.0, 60.0, 60.0, 70.0, 70.0, 99.0])  # (0.1, 40) beaten by (0.1, 60); (0.2, 60) by it too
    assert pareto(x, y).tolist() == [True, False, True, False, True, False, False]


def test_misroutes_count_per_family_with_examples(both_run):
    answers = load_answers(both_run)
    table, examples = misroutes_table(answers, parse_policy("force_s1"), examples=5)
    counts = {row.labels[0]: [c.value for c in row.cells] for row in table.rows}
    # n, S1 taken & S2 better (count, %), S2 taken & S1 better (count, %), not compared
    assert counts["realtime"] == [3, 1, pytest.approx(100 / 3), 0, 0, 0]  # q3
    assert counts["clue"] == [3, 1, pytest.approx(100 / 3), 0, 0, 0]  # q4
    assert counts["all"] == [6, 2, pytest.approx(100 / 3), 0, 0, 0]
    assert examples == [
        "- scheduler=both · realtime · S1 taken, S2 better: q3 at 2 s, 'Which object appeared earlier?': "
        "S1 'B' (score 0), S2 'A' (score 1); reason: forced",
        "- scheduler=both · clue · S1 taken, S2 better: q4 at 3 s, 'What was shown before the cup?': "
        "S1 'B' (score 0), S2 'A' (score 1); reason: forced",
    ]
    table, examples = misroutes_table(answers, parse_policy("recorded"))  # the run kept S2: q2 was S1's
    assert [c.value for c in table.rows[0].cells][:5] == [3, 0, 0, 1, pytest.approx(100 / 3)]
    assert examples[0].endswith("S1 'A' (score 1), S2 'B' (score 0); reason: both: S2 kept")
    with pytest.raises(ValueError, match="misroutes need one θ"):
        misroutes_table(answers, parse_policy("threshold:confidence"))


def test_rerun_lists_the_queries_whose_new_route_never_answered(tmp_path, monkeypatch):
    # a force_s1 run (older records: no paths, only their own route's answer): the rule sends q3..q6 to S2
    records = [record("v0", q, t, s[0], question=text, time_s=float(i), route_reason="forced")
               for i, (q, t, s, _, text) in enumerate(QUERIES)]  # fmt: skip
    overrides = ["+experiment=quickstart", "router=uniform", "scheduler=force_s1", "scheduler.name=force_s1"]
    job = write_job(tmp_path / "outputs" / "t" / "router=uniform,scheduler=force_s1", CONFIG, records,
                    overrides=overrides)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    policy = Policy("rules.yaml", "replay", "rule", node=RULES)
    (answers,) = load_answers(job.relative_to(tmp_path))
    lines = rerun([answers], policy)
    written = job / "rerun-rules-S2.txt"
    shown = written.relative_to(tmp_path)
    assert written.read_text() == "q3\nq4\nq5\nq6\n"
    assert lines[0] == f"router=uniform,scheduler=force_s1: 4 queries need S2 under rules.yaml; wrote {shown}"
    command = shlex.split(lines[1])
    assert command[:2] == ["python", "run_sweep.py"]
    assert command[2:] == ["+experiment=quickstart", "router=uniform", "scheduler=force_s2",
                           f'run.only_queries="{shown}"', "run.name=t-rerun", "hydra.mode=RUN"]  # fmt: skip
    parsed = OverridesParser.create().parse_overrides(command[2:])  # Hydra reads the path as one value
    assert parsed[3].value() == str(shown)
    assert (_one(job, policy).n, _one(job, policy).missing) == (2, 4)  # q1 q2 scored; q3..q6 lack S2's answer
