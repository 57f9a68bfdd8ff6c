"""Each benchmark's aggregation in analysis gives the numbers of that benchmark's official scorer on the same
answers (OVO-Bench and StreamingBench: their official-format scorers; judged ones: official_table on records)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.aggregate import aggregation, as_sums, sums
from analysis.load import load
from analysis.summary import summarize
from harness.benchmarks import cogstream_scoring, ovo_bench_scoring, streambench, streamingbench_scoring
from tests.fixtures.analysis_records import record, write_job


def _levels(tmp_path, dataset, records, policy="official", metric="official"):
    frame = load(write_job(tmp_path / "run" / "job", {"dataset": {"name": dataset}}, records), cache=False).records
    agg = aggregation(dataset)
    levels = agg.combine(as_sums(sums(frame, agg, policy, metric, ["job"])))
    return {k: float(v[0]) for k, v in levels.columns().items() if not np.isnan(v[0])}


def _same(ours, official):
    expected = {**official.tasks, **official.categories, "overall": official.overall}
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value), key


def test_task_families_are_the_job_summary(tmp_path):
    rows = [record(f"v{i % 3}", f"q{i}", ("x", "y", "z")[i % 3], float(i % 4 == 0)) for i in range(12)]
    rows.append(record("v0", "q99", "y", None, error="ServerError: 503"))
    ours = _levels(tmp_path, "synthetic", rows)
    summary = summarize(rows, ("x", "y", "z"))
    assert ours["overall"] == pytest.approx(summary["overall"])
    assert {t: ours[t] for t in "xyz"} == pytest.approx({t: summary["tasks"][t]["accuracy"] for t in "xyz"})


def test_ovo_bench_matches_its_official_scorer(tmp_path):
    rng = np.random.default_rng(0)
    rows, results = [], {"backward": [], "realtime": [], "forward": []}
    lists = {"Backward": "backward", "Real-time": "realtime"}
    for i, task in enumerate(t for codes in ovo_bench_scoring.CATEGORIES.values() for t in codes for _ in range(3)):
        correct = bool(rng.random() < 0.6)
        error = i % 11 == 5  # a failed call: null response, scored wrong by the official script
        rows.append(record(f"v{i % 4}", f"q{i}", task, None if error else float(correct),
                           error="ServerError: 502" if error else None))  # fmt: skip
        response = None if error else ("A" if correct else "B")
        if task in ovo_bench_scoring.FORWARD_TASKS:
            probe = {"realtime": 1.0, "type": 1, "response": None if error else ("Yes" if correct else "No")}
            if task == "REC":
                probe = {"realtime": 1.0, "count": 2, "response": None if error else ("2" if correct else "3")}
            results["forward"].append({"id": i, "video": "v.mp4", "task": task, "test_info": [probe]})
        else:
            category = next(c for c, codes in ovo_bench_scoring.CATEGORIES.items() if task in codes)
            item = {"id": i, "video": "v.mp4", "task": task, "question": "?", "response": response, "ground_truth": "A"}
            results[lists[category]].append(item)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    _same(_levels(tmp_path, "ovo_bench", rows), ovo_bench_scoring.score_predictions(path))


def test_streamingbench_matches_its_official_scorer(tmp_path):
    rng = np.random.default_rng(1)
    rows, questions = [], []
    names = {code: name for name, code in streamingbench_scoring.TASK_CODES.items()}
    for i, code in enumerate(c for c in streamingbench_scoring.TASK_CODES.values() if c != "PO" for _ in range(3)):
        correct = bool(rng.random() < 0.5)
        question = {"task_type": names[code], "question": f"q{i}", "time_stamp": f"00:00:{i:02d}", "answer": "A"}
        if i % 13 == 4:  # an error: no response recorded, left out of the denominator by count.py
            rows.append(record(f"v{i % 5}", f"q{i}", code, None, error="RateLimitError: 429"))
        elif i % 13 == 7:  # an empty reply: count.py leaves it out too
            rows.append(record(f"v{i % 5}", f"q{i}", code, 0.0, response="", parsed=""))
            question["M"] = ""
        else:
            rows.append(record(f"v{i % 5}", f"q{i}", code, float(correct)))
            question["M"] = "A. yes" if correct else "B"
        questions.append(question)
    for i, (at, reply) in enumerate([(10, "red"), (11, "blue"), (20, "red"), (9, "a red one")]):
        on_time, content = abs(at - 10) <= 2, abs(at - 10) <= 2 and "red" in reply
        rows.append(record(f"v{i}", f"po{i}", "PO", float(content), kind="proactive", response=reply, parsed=reply,
                           subscores={"time": float(on_time), "content": float(content)}))  # fmt: skip
        turns = [{"role": "user", "content": "q", "time": at}, {"role": "assistant", "content": reply, "time": at}]
        questions.append({"task_type": "Proactive Output", "question": f"po{i}", "time_stamp": "00:00:01",
                          "ground_truth_time_stamp": "00:00:10", "ground_truth_output": "red",
                          "M": {"answered": at, "dialog_history": turns}})  # fmt: skip
    path = tmp_path / "out.json"
    path.write_text(json.dumps([{"video_path": "v.mp4", "questions": questions}]))
    _same(_levels(tmp_path, "streamingbench", rows), streamingbench_scoring.score_predictions(path))


def test_streambench_matches_official_table(tmp_path):
    rows = []
    for i, code in enumerate(("OS", "LM", "SM", "CI") * 3):
        yes = i % 3 != 0
        rows.append(record(f"v{i % 3}", f"q{i}", code, float(yes), kind="open", response="r", parsed="r",
                           subscores={"judge_score": float(i % 6)}))  # fmt: skip
    rows.append(record("v0", "q90", "OS", 0.0, kind="open", response="r", parsed="r", judge_failed=("judgment",)))
    rows.append(record("v1", "q91", "LM", None, kind="open", error="ApiTimeoutError: no answer in 60 s"))
    _same(_levels(tmp_path, "streambench", rows), streambench.official_table(rows))


def test_cogstream_matches_official_table(tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    for i, code in enumerate(("Att", "Obj", "Rea", "TempP") * 3):
        dims = {d: float(rng.integers(0, 11)) for d in cogstream_scoring.DIMENSIONS}
        failed: tuple[str, ...] = ()
        if i == 2:  # two dimensions unreadable: the QA's mean uses the three others
            dims, failed = {k: v for k, v in dims.items() if k not in ("IA", "TP")}, ("IA", "TP")
        if i == 5:  # nothing readable: left out
            dims, failed = {}, cogstream_scoring.DIMENSIONS
        rows.append(record(f"v{i % 4}", f"q{i}", code, 0.5, kind="open", response="r", parsed="r", subscores=dims,
                           judge_failed=failed))  # fmt: skip
    rows.append(record("v0", "q99", "Att", None, kind="open", error="ServerError: 500"))
    _same(_levels(tmp_path, "cogstream", rows), cogstream_scoring.official_table(rows))


def test_policies_move_failures_in_or_out_of_the_denominator(tmp_path):
    rows = [record("v0", f"q{i}", "x", 1.0) for i in range(3)] + [record("v1", "q9", "x", None, error="ServerError")]
    assert _levels(tmp_path, "synthetic", rows)["overall"] == pytest.approx(75.0)  # official here: wrong
    assert _levels(tmp_path / "b", "synthetic", rows, "excluded")["overall"] == pytest.approx(100.0)
    failed = record("v1", "q9", "OP", None, error="ServerError: 503")
    assert _levels(tmp_path / "c", "streamingbench", [record("v0", "q0", "OP", 1.0), failed])["OP"] == 100.0


def test_the_robust_metric_reads_the_stricter_parser(tmp_path):
    rows = [
        record("v0", "q0", "x", 1.0, subscores={"robust": 0.0}),  # the official rule accepted, the strict one not
        record("v0", "q1", "x", 1.0, subscores={"robust": 1.0}),
        record("v1", "q2", "y", 1.0),  # no stricter parser for this task: its official score stands
    ]
    assert _levels(tmp_path, "synthetic", rows, metric="robust") == {"x": 50.0, "y": 100.0, "overall": 75.0}
    assert _levels(tmp_path / "b", "synthetic", rows)["overall"] == 100.0
