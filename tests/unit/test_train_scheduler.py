"""Training the classifier scheduler from a `scheduler=both` run: labels, the fit, the command and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.errors import DataError
from harness.records import ResultRecord
from harness.runner.store import ShardWriter, shard_stem
from harness.train_scheduler import examples, fit_logistic, job_dirs, label, main, train

# questions about what is on screen: S1's window suffices, and it is the cheaper route
NOW = [
    "What colour is the square on screen now?",
    "What is the person holding right now?",
    "Which shape is visible at the moment?",
    "What is the man doing now?",
    "Is the light currently on?",
    "What is written on the sign in view?",
    "How many circles are on the screen right now?",
    "What colour is the car that is shown now?",
]
# questions about the stream's past: only S2 (memory) answers them right
PAST = [
    "How many circles have appeared so far?",
    "Which shape was shown first?",
    "What colour was the square earlier in the video?",
    "Where did the man put the keys before?",
    "What happened at the start of the video?",
    "How many times has the dog appeared up to now?",
    "Which object did we see before the red circle?",
    "Was the light on earlier?",
]
TIMES_S = (6.0, 35.0, 90.0)  # each question is asked at each time, so the stream state says nothing of the label


def route_usage(score: float, cost_usd: float, modelled_s: float | None = 0.5, latency_s: float = 0.2) -> dict:
    """One route's entry of a record's `paths`, as a both run writes it."""
    return {
        "n_calls": 1, "latency_s": latency_s, "modelled_latency_s": modelled_s, "tokens_in": 900, "tokens_out": 2,
        "visual_tokens": 800, "cost_usd": cost_usd, "cached_calls": 0, "response": "A", "parsed": "A",
        "score": score, "confidence": None, "response_time_s": None, "answered_at_s": None,
    }  # fmt: skip


def both_record(n: int, question: str, time_s: float, s1: float, s2: float, since_s: float | None = None, **kw):
    """A record of `scheduler=both` (S2 kept): S1 costs a quarter of S2."""
    paths = {"S1": route_usage(s1, 0.001), "S2": route_usage(s2, 0.004, modelled_s=1.5)}
    return ResultRecord(
        schema=1, config_hash=kw.get("config_hash", "feedc0ffee"), sample_id=f"v{n % 5}", query_id=f"q{n:03d}",
        task="any", kind="mcq", time_s=time_s, route="S2", route_reason="both: S2 kept", policy="both",
        question=question, features={"memory_frames": 2 * time_s, "since_scene_change_s": since_s}, paths=paths,
        response="A", parsed="A", score=s2,
    )  # fmt: skip


def crafted_records() -> list[ResultRecord]:
    """NOW questions: both routes right (S1 cheaper) or only S1 right; PAST questions: only S2 right."""
    records = []
    for t in TIMES_S:
        for q in NOW:
            records.append(both_record(len(records), q, t, 1.0, 0.0 if len(records) % 4 == 0 else 1.0))
        for q in PAST:
            records.append(both_record(len(records), q, t, 0.0, 1.0, since_s=None if t > 30 else t / 2))
    return records


def write_job(folder: Path, records: list[ResultRecord], shards: int = 2) -> Path:
    """A job folder as the runner leaves it: records spread over shard files."""
    writers = [ShardWriter(folder / "shards" / f"{shard_stem(i, shards)}.jsonl") for i in range(shards)]
    for n, record in enumerate(records):
        writers[n % shards].append(record)
    for writer in writers:
        writer.close()
    (folder / "config.yaml").write_text("scheduler:\n  name: both\n")
    return folder


@pytest.fixture(scope="module")
def both_run(tmp_path_factory) -> Path:
    return write_job(tmp_path_factory.mktemp("run") / "scheduler=both", crafted_records())


def test_the_label_is_the_route_that_was_right_at_lower_cost():
    cheap, dear = route_usage(1.0, 0.001), route_usage(1.0, 0.004)
    assert label({"S1": route_usage(0.0, 0.001), "S2": dear}, 1.0) == ("S2", "only S2 right")
    assert label({"S1": cheap, "S2": route_usage(0.0, 0.0)}, 1.0) == ("S1", "only S1 right")
    assert label({"S1": dear, "S2": cheap}, 1.0) == ("S2", "both right, cheaper")
    assert label({"S1": route_usage(0.5, 0.001), "S2": route_usage(0.5, 0.004)}, 1.0) == ("S1", "both wrong, cheaper")
    assert label({"S1": route_usage(0.5, 0.004), "S2": route_usage(0.5, 0.001)}, 0.5) == ("S2", "both right, cheaper")
    # free local models: modelled latency decides, then measured latency, then S1
    slow, fast = route_usage(1.0, 0.0, modelled_s=1.5), route_usage(1.0, 0.0, modelled_s=0.4)
    assert label({"S1": slow, "S2": fast}, 1.0)[0] == "S2"
    unmodelled = route_usage(1.0, 0.0, modelled_s=None, latency_s=0.9), route_usage(1.0, 0.0, None, 0.3)
    assert label({"S1": unmodelled[0], "S2": unmodelled[1]}, 1.0)[0] == "S2"
    assert label({"S1": cheap, "S2": cheap}, 1.0)[0] == "S1"


def test_examples_keep_answered_queries_with_both_routes_and_count_the_rest():
    kept = both_record(0, "Which shape was shown first?", 40.0, 0.0, 1.0, since_s=12.5)
    ids = {"schema": 1, "config_hash": "x", "sample_id": "v", "task": "t", "kind": "mcq"}
    error = ResultRecord(**ids, query_id="e", time_s=1.0, error="ServerError: 500")
    one_route = ResultRecord(
        **ids, query_id="o", time_s=2.0, route="S2", policy="force_s2", paths={"S2": route_usage(1.0, 0.004)}, score=1
    )
    found, skipped = examples([kept, error, one_route], correct=1.0)
    assert [(e.question, e.label, e.why) for e in found] == [("Which shape was shown first?", "S2", "only S2 right")]
    assert found[0].stream.tolist() == [40.0, 80.0, 12.5]
    assert skipped == {"error records": 1, "without both routes' scores": 1}
    # no scene change seen yet: the stream start was the last one
    [early], _ = examples([both_record(0, "q", 8.0, 1.0, 1.0)], correct=1.0)
    assert early.stream.tolist() == [8.0, 16.0, 8.0]


def test_fit_reaches_the_regularised_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x @ np.array([2.0, -1.0, 0.0, 0.5, 0.0]) + 0.3 + rng.normal(size=200) > 0).astype(np.float64)
    w, b, iterations = fit_logistic(x, y, l2=1.0)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    assert np.abs(x.T @ (p - y) + 1.0 * w).max() < 1e-6  # the gradient of the penalised loss vanishes
    assert abs(np.sum(p - y)) < 1e-6  # ... also along the unpenalised bias
    assert iterations < 20  # Newton: a handful of steps
    assert np.linalg.norm(fit_logistic(x, y, l2=50.0)[0]) < np.linalg.norm(w)  # a larger penalty shrinks the weights


def test_fit_stays_finite_on_separable_data():
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    w, b, _ = fit_logistic(x, np.array([0.0, 0.0, 1.0, 1.0]), l2=0.1)
    assert np.isfinite(w).all() and w[0] > 0 and np.isfinite(b)


def test_training_is_deterministic_and_reports_what_it_learned_from(both_run, tmp_path):
    first = train(both_run, progress=False).save(tmp_path / "a.json")
    second = train(both_run, progress=False).save(tmp_path / "b.json")
    assert first.read_bytes() == second.read_bytes()  # same run, same file: the job hash stays put
    training = json.loads(first.read_text())["training"]
    assert training["run"] == str(both_run.resolve())
    assert training["jobs"] == {".": ["feedc0ffee"]}
    assert training["n"] == 48 and training["labels"] == {"S1": 24, "S2": 24}
    assert training["why"] == {"both right, cheaper": 18, "only S1 right": 6, "only S2 right": 24}
    assert training["accuracy"] == 1.0


def test_the_command_writes_the_model_and_a_short_report(both_run, tmp_path, capsys):
    out = tmp_path / "models" / "router.json"
    assert main([str(both_run), "-o", str(out), "--l2", "0.5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "48 queries from 1 job(s): S1 24, S2 24" in printed
    assert "training accuracy 1.000" in printed
    assert f"wrote {out} (use it with scheduler=classifier scheduler.checkpoint={out})" in printed
    assert json.loads(out.read_text())["training"]["l2"] == 0.5


def test_a_sweep_folder_trains_on_every_job_below_it(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    records = crafted_records()
    write_job(sweep / "backend=a", records[:24])
    write_job(sweep / "backend=b", [both_record(i, r.question, r.time_s, r.paths["S1"]["score"],
              r.paths["S2"]["score"], config_hash="b0b0") for i, r in enumerate(records[24:])])  # fmt: skip
    write_job(sweep / ".jobs" / "stale", records[:4])  # bookkeeping folders are not jobs
    assert job_dirs(sweep) == [sweep / "backend=a", sweep / "backend=b"]
    out = tmp_path / "m.json"
    assert main([str(sweep), "-o", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["training"]["jobs"] == {"backend=a": ["feedc0ffee"], "backend=b": ["b0b0"]}
    assert "48 queries from 2 job(s)" in capsys.readouterr().out


def test_a_run_without_both_routes_names_the_command_that_makes_one(tmp_path, capsys):
    forced = [
        ResultRecord(schema=1, config_hash="x", sample_id="v", query_id=f"q{i}", task="t", kind="mcq", time_s=1.0,
                     route="S2", policy="force_s2", question="Q?", paths={"S2": route_usage(1.0, 0.004)}, score=1.0)
        for i in range(3)
    ]  # fmt: skip
    run = write_job(tmp_path / "forced", forced)
    assert main([str(run), "-o", str(tmp_path / "m.json"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no record holds both routes' answers (3 without both routes' scores)" in err
    assert "python run_sweep.py scheduler=both" in err
    assert not (tmp_path / "m.json").exists()


def test_nothing_to_learn_is_an_error_that_says_why(tmp_path):
    with pytest.raises(DataError, match="no job folder"):
        train(tmp_path, progress=False)
    empty = tmp_path / "empty"
    (empty / "shards").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no records yet\. Run it first: python run_sweep\.py scheduler=both"):
        train(empty, progress=False)
    all_past = [r for r in crafted_records() if r.question in PAST]
    with pytest.raises(DataError, match=r"all 24 queries are labelled S2 .* scheduler=force_s2"):
        train(write_job(tmp_path / "one_class", all_past), progress=False)


def test_the_command_refuses_a_non_positive_penalty(both_run, tmp_path, capsys):
    assert main([str(both_run), "-o", str(tmp_path / "m.json"), "--l2", "0"]) == 2
    assert "--l2 must be > 0" in capsys.readouterr().err
