"""Reading LLM-judge outputs and aggregating judged records into the official tables, on hand-computed numbers."""

from __future__ import annotations

import pytest

from harness.benchmarks import cogstream_scoring
from harness.benchmarks.cogstream_scoring import DIMENSIONS, read_score, verdict
from harness.benchmarks.judge_prompts import JudgeTemplate, Piece
from harness.benchmarks.streambench import StreamBench, StreamBenchConfig, read_judgment
from harness.benchmarks.streambench import official_table as streambench_table
from harness.judge import Verdict
from harness.records import Query, ResultRecord, Truth


def _record(query_id: str, task: str, score: float | None = 0.0, subscores=None, failed=(), error=None):
    return ResultRecord(
        schema=1, config_hash="h", sample_id="s", query_id=query_id, task=task, kind="open", time_s=1.0,
        response=None if error else "an answer", score=None if error else score, subscores=subscores or {},
        judge_failed=tuple(failed), error=error,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{'llama_pred': 'yes', 'score': 4}", (True, 4)),
        ("Sure! {'llama_pred': 'no', 'score': 1} ... final: {'llama_pred': 'yes', 'score': 5}", (True, 5)),  # last
        ("{'llama_pred': 'Yes', 'score': 3}", (True, 3)),  # lower-cased
        ("{'llama_pred': 'yes, but only partly', 'score': 3}", (True, 3)),  # substring, "yes" checked first
        ("{'llama_pred': 'No', 'score': 0}", (False, 0)),
        ("{'llama_pred': 'not really', 'score': 2}", (False, 2)),  # "no" is a substring of "not"
        ('{"llama_pred": "no", "score": "2"}', (False, 2)),  # int("2"), as calculate_score.py
        ("{'llama_pred': 'yes', 'score': 4.8}", (True, 4)),  # int(4.8): the official example itself says 4.8
        ("{'llama_pred': 'maybe', 'score': 2}", None),  # neither yes nor no
        ("{'score': 4}", None),  # missing llama_pred
        ("{'llama_pred': 'yes'}", None),  # missing score
        ("{'llama_pred': 'yes', 'score': '4.5'}", None),  # int('4.5') fails
        ("{'llama_pred': 'yes', 'score': 'high'}", None),
        ("{'llama_pred': 'yes', 'score': 6}", None),  # out of 0..5
        ("{'llama_pred': 'yes', 'score': -1}", None),
        ("{'llama_pred': 'yes', 'score': True}", None),
        ("{'llama_pred': 1, 'score': 3}", None),
        ("{'llama_pred': 'yes',\n 'score': 4}", None),  # the official pattern matches within one line
        ("{'llama_pred': 'yes', 'score': 4} and {oops}", None),  # the last {...} is not a literal
        ("{'llama_pred', 'yes'}", None),  # a set, not a dict
        ("The answer matches.", None),
        ("", None),
        (None, None),  # the judge call failed
    ],
)
def test_streambench_judgment_is_read_as_the_official_script_reads_it(text, expected):
    assert read_judgment(text) == expected


def test_streambench_verdict_is_yes_or_no_with_the_judge_score():
    bench = StreamBench(StreamBenchConfig())
    query, truth = Query("q", 3.0, "What?", "OS", "open"), Truth("q", "A cup.")
    assert bench.judge_verdict(query, truth, {"judgment": "{'llama_pred': 'yes', 'score': 4}"}) == Verdict(
        1.0, {"judge_score": 4.0}
    )
    assert bench.judge_verdict(query, truth, {"judgment": "{'llama_pred': 'no', 'score': 2}"}) == Verdict(
        0.0, {"judge_score": 2.0}
    )
    assert bench.judge_verdict(query, truth, {"judgment": "yes"}) == Verdict(0.0, {}, ("judgment",))
    assert bench.judge_verdict(query, truth, {"judgment": None}) == Verdict(0.0, {}, ("judgment",))
    assert bench.score(query, truth, None, None) == (0.0, {})


def test_streambench_table_counts_yes_over_yes_plus_no_and_means_the_scores():
    records = [
        _record("a", "OS", 1.0, {"judge_score": 4.0}),
        _record("b", "OS", 1.0, {"judge_score": 5.0}),
        _record("c", "OS", 0.0, {"judge_score": 1.0}),
        _record("d", "CI", 0.0, {"judge_score": 2.0}),
        _record("e", "CI", 0.0, failed=("judgment",)),  # unreadable: in no denominator
        _record("f", "XX", 1.0, {"judge_score": 3.0}),
        _record("g", "SM", error="BackendError: down"),  # unanswered: in no denominator
    ]
    table = streambench_table(records)
    assert list(table.tasks) == ["OS", "CI", "XX"]  # known codes in table order, then the others
    assert table.tasks == pytest.approx({"OS": 200 / 3, "CI": 0.0, "XX": 100.0})
    assert table.counts == {"OS": 3, "CI": 1, "XX": 1}
    assert table.categories == pytest.approx({"OS score": 10 / 3, "CI score": 2.0, "XX score": 3.0, "score": 3.0})
    assert table.overall == pytest.approx(60.0)  # 3 yes of 5 readable judgments
    assert any("1 answers with an unreadable judgment and 1 unanswered" in note for note in table.notes)
    assert streambench_table([]).overall == 0.0


@pytest.mark.parametrize(
    ("text", "index", "expected"),
    [
        ('{"PredA3": 7}', 3, 7),
        ('{\n    "PredA1": 8\n}', 3, 8),  # the only pair: the official examples say PredA1 whatever the QA
        ('{"PredA3": 7, "PredA13": 2}', 3, 7),  # the whole key, not its last digit
        ('{"PredA3": 7, "PredA13": 2}', 13, 2),
        ('{"PredA1": 8, "PredA2": 5}', 3, None),  # several pairs, none of this QA: ambiguous
        ("{'score': 6}", 0, 6),
        ('{"PredA0": "9"}', 0, 9),
        ('{"PredA0": 7.9}', 0, 7),  # int(float()), as the scripts
        ('{"PredA0": 10}', 0, 10),
        ('{"PredA0": 11}', 0, None),  # out of 0..10
        ('{"PredA0": -1}', 0, None),
        ("I would give it a seven.", 0, None),
        (None, 0, None),
    ],
)
def test_cogstream_score_is_the_qas_own_pair(text, index, expected):
    assert read_score(text, index) == expected


def test_cogstream_verdict_keeps_the_readable_dimensions_and_lists_the_rest():
    outputs = {"IA": '{"PredA2": 8}', "DC": '{"PredA2": 6}', "CA": "n/a", "TP": None, "LC": '{"PredA2": 7}'}
    assert verdict(outputs, 2) == Verdict(pytest.approx(0.7), {"IA": 8.0, "DC": 6.0, "LC": 7.0}, ("CA", "TP"))
    assert verdict(dict.fromkeys(DIMENSIONS, "no score"), 0) == Verdict(0.0, {}, DIMENSIONS)


def test_cogstream_table_aggregates_as_step1b():
    five = dict(zip(DIMENSIONS, (8.0, 6.0, 7.0, 9.0, 10.0), strict=True))  # per-QA mean 8
    records = [
        _record("a", "Att", 0.8, five),
        _record("b", "Att", 0.4, dict.fromkeys(DIMENSIONS, 4.0)),  # mean 4
        _record("c", "ObjTrack", 0.9, {"IA": 10.0, "DC": 8.0}, failed=("CA", "TP", "LC")),  # mean 9
        _record("d", "Obj", 0.0, failed=DIMENSIONS),  # nothing readable: left out
        _record("e", "TempP", 0.2, dict.fromkeys(DIMENSIONS, 2.0)),  # left out, as step1b's INVALID_LABEL
        _record("f", "Dial", error="BackendError: down"),
    ]
    table = cogstream_scoring.official_table(records)
    assert table.tasks == pytest.approx({"Att": 60.0, "ObjTrack": 90.0})  # 10 x mean(8, 4); 10 x 9
    assert table.counts == {"Att": 2, "ObjTrack": 1}
    assert table.categories == pytest.approx({"IA": 220 / 3, "DC": 60.0, "CA": 55.0, "TP": 65.0, "LC": 70.0})
    assert table.overall == pytest.approx((220 / 3 + 60 + 55 + 65 + 70) / 5)
    notes = " ".join(table.notes)
    assert "our interpretation" in notes and "1 QAs had some dimensions unreadable" in notes
    assert "1 QAs with no readable dimension and 1 unanswered" in notes and "1 Temporal Perception" in notes


def test_optional_pieces_appear_only_with_content():
    template = JudgeTemplate("sys", (Piece("A{x}|"), Piece("ctx:{c}|", optional=True), Piece("{{literal}}")))
    assert template.render(x="1", c="") == ("sys", "A1|{literal}")
    assert template.render(x="{2}", c="yes") == ("sys", "A{2}|ctx:yes|{literal}")
