"""StreamingBench official scoring: count.py's per-question rules, and the table of a hand-written output folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.benchmarks.streamingbench_scoring import (
    ProactiveVerdict,
    mcq_correct,
    parse_time_stamp,
    proactive_correct,
    score_predictions,
)

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = REPO / "tests/fixtures/streamingbench/outputs"

# Hand-computed from the four files in OUTPUTS (model key "MiniCPM-V"); correct / scored, x100.
EXPECTED_TASKS = {
    "OP": 100.0,  # 2/2: "A"=A, "B. red"=B
    "CR": 50.0,  # 1/2: " B" vs B wrong (leading space), "C"=C
    "CS": 0.0,  # 0/1: "b" vs B wrong (case)
    "ATP": 66.66666666666667,  # 2/3: "D"=D, "D"=D, "A" vs D
    "EU": 100.0,  # 1/1: one question has no response key -> not in the denominator
    "TR": 0.0,  # 0/1: "(C)" vs C
    "PR": 50.0,  # 1/2: "The answer is B" wrong, "B" right
    "SU": 100.0,  # 1/1
    "ACP": 50.0,  # 1/2
    "CT": 50.0,  # 1/2: a null response is left out; "C"=C, "A" vs B
    "ER": 100.0,  # 2/2
    "SCU": 50.0,  # 1/2
    "SD": 0.0,  # 0/2
    "MA": 66.66666666666667,  # 2/3 (one question has a stray fifth option "E. .", irrelevant to scoring)
    "ACU": 50.0,  # 1/2
    "MCU": 100.0,  # 1/1: an empty response "" is left out
    "SQA": 66.66666666666667,  # 2/3: "A"=A, "B" vs C, "D. Into the pan"=D; an empty response left out
    "PO": 66.66666666666667,  # 2/3 on time: last turn 22 vs gt 20 (+2), 63 vs gt "01:05"=65 (-2); 34 vs 30 (+4) late
    "PO_content": 33.333333333333336,  # 1/3: "Goal! ..." contains "Goal"; "the oven is open" lacks "The oven is open"
}
EXPECTED_COUNTS = {"OP": 2, "CR": 2, "CS": 1, "ATP": 3, "EU": 1, "TR": 1, "PR": 2, "SU": 1, "ACP": 2, "CT": 2}
EXPECTED_COUNTS |= {"ER": 2, "SCU": 2, "SD": 2, "MA": 3, "ACU": 2, "MCU": 1, "SQA": 3, "PO": 3, "PO_content": 3}
EXPECTED_CATEGORIES = {
    # (2+1+0+2+1+0+1+1+1+1) / (2+2+1+3+1+1+2+1+2+2) = 10/17
    "Real-Time": 58.8235294117647,
    # mean(100, 50, 0, 66.667) = (650/3)/4 = 54.1667 (the micro average 5/9 = 55.56 is NOT the official rule)
    "Omni-Source": 54.16666666666667,
    # ACU + MCU + SQA + PO_content = (1+1+2+1) / (2+1+3+3) = 5/9
    "Contextual": 55.55555555555556,
}
# every scored question, PO_content for proactive: (10 + 5 + 5) / (17 + 9 + 9) = 20/35
EXPECTED_OVERALL = 57.142857142857146


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def mcq(task_type: str, answer: str, **response: object) -> dict[str, object]:
    """One real/omni question as the official output holds it; `response` is {model name: reply} or empty."""
    return {"task_type": task_type, "question": "q", "time_stamp": "00:00:10", "answer": answer, **response}


@pytest.mark.parametrize(
    ("response", "answer", "correct"),
    [("B", "B", True), ("B. red", "B", True), ("BA", "B", True), (" B", "B", False), ("b", "B", False)]
    + [("(B)", "B", False), ("The answer is B", "B", False), ("", "B", False), ("A", "B", False)],
)
def test_mcq_first_character_rule(response: str, answer: str, correct: bool) -> None:
    assert mcq_correct(response, answer) is correct


@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [("00:03:10", 190), ("1:02:03", 3723), ("00:24", 24), ("00:00:8", 8), ("00:12450", 12450), ("45", 45)],
)
def test_time_stamp_sums_parts_times_powers_of_60_like_count_py(stamp: str, seconds: int) -> None:
    assert parse_time_stamp(stamp) == seconds


def test_time_stamp_that_is_not_numbers_raises() -> None:
    with pytest.raises(ValueError):
        parse_time_stamp("00:xx:10")


@pytest.mark.parametrize(
    ("final_time_s", "reply", "verdict"),
    [
        (22, "Goal now", ProactiveVerdict(True, True)),  # +2 s: inclusive
        (18, "Goal", ProactiveVerdict(True, True)),  # -2 s: inclusive
        (20, "goal", ProactiveVerdict(True, False)),  # the text test is case-sensitive
        (20, None, ProactiveVerdict(True, False)),
        (23, "Goal", ProactiveVerdict(False, False)),  # +3 s: text does not matter when late
        (17, "Goal", ProactiveVerdict(False, False)),
        (24, "No", ProactiveVerdict(False, False)),  # never said yes: last poll at gt + 4
    ],
)
def test_proactive_window_of_two_seconds_and_output_text(
    final_time_s: float, reply: str | None, verdict: ProactiveVerdict
) -> None:
    assert proactive_correct(final_time_s, reply, 20, "Goal") == verdict


def test_fixture_folder_gives_the_hand_computed_table() -> None:
    table = score_predictions(OUTPUTS)
    assert table.tasks == pytest.approx(EXPECTED_TASKS, abs=1e-9)
    assert list(table.tasks) == list(EXPECTED_TASKS)  # table order
    assert table.counts == EXPECTED_COUNTS
    assert table.categories == pytest.approx(EXPECTED_CATEGORIES, abs=1e-9)
    assert table.overall == pytest.approx(EXPECTED_OVERALL, abs=1e-9)
    excluded, proactive = table.notes
    assert (
        excluded.startswith("5 questions without a recorded response")
        and "(EU 1, CT 1, MCU 1, SQA 1, PO 1)" in excluded
    )
    # timing-only PO instead: Contextual (1+1+2+2)/9 = 66.67, overall 21/35 = 60.00
    assert "66.67 and 60.00" in proactive


def test_single_file_scores_its_own_tasks_and_says_which_are_missing() -> None:
    table = score_predictions(OUTPUTS / "sqa_output_MiniCPM-V.json")
    assert table.tasks == pytest.approx({"SQA": 200 / 3})
    assert table.categories == pytest.approx({"Contextual": 200 / 3})
    assert table.overall == pytest.approx(200 / 3)
    assert any("no scored questions for OP" in note for note in table.notes)


def test_question_without_response_is_left_out_of_the_denominator(tmp_path: Path) -> None:
    entries = [{"video_path": "v.mp4", "questions": [mcq("Counting", "A", m="A"), mcq("Counting", "B")]}]
    table = score_predictions(write_json(tmp_path / "real.json", entries))
    assert table.tasks == {"CT": 100.0}  # 1/1, not 1/2
    assert table.counts == {"CT": 1}
    assert table.notes[0].startswith("1 questions without a recorded response")


def test_model_key_can_be_named_when_a_file_holds_two_models(tmp_path: Path) -> None:
    entries = [{"video_path": "v.mp4", "questions": [mcq("Counting", "A", gpt="A", claude="B")]}]
    path = write_json(tmp_path / "real.json", entries)
    with pytest.raises(ValueError, match="'claude', 'gpt'; pass model="):
        score_predictions(path)
    assert score_predictions(path, model="claude").tasks == {"CT": 0.0}


@pytest.mark.parametrize(
    ("question", "message"),
    [
        (mcq("Counting", "A", m=["A"]), "entry 0, question 0: field 'm': expected a string"),
        ({**mcq("Counting", "A", m="A"), "answer": None}, "entry 0, question 0: field 'answer'"),
        (mcq("Counting in the dark", "A", m="A"), "entry 0, question 0: field 'task_type': unknown task"),
        (
            {"task_type": "Proactive Output", "ground_truth_time_stamp": "00:10", "ground_truth_output": "x", "m": {}},
            "entry 0, question 0: field 'm.dialog_history'",
        ),
        (
            {"task_type": "Proactive Output", "ground_truth_time_stamp": "1:x", "ground_truth_output": "x"}
            | {"m": {"dialog_history": [{"role": "assistant", "content": "x", "time": 10}]}},
            "entry 0, question 0: field 'ground_truth_time_stamp': unreadable '1:x'",
        ),
    ],
)
def test_malformed_item_names_file_item_and_field(tmp_path: Path, question: dict[str, object], message: str) -> None:
    path = write_json(tmp_path / "bad_output.json", [{"video_path": "v.mp4", "questions": [question]}])
    with pytest.raises(ValueError, match="bad_output.json") as error:
        score_predictions(path)
    assert message in str(error.value)


def test_malformed_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('[{"questions": [')
    with pytest.raises(ValueError, match="broken.json: not JSON"):
        score_predictions(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="top level: expected a list"):
        score_predictions(write_json(tmp_path / "object.json", {"questions": []}))


def test_same_question_in_two_files_of_a_folder_is_refused(tmp_path: Path) -> None:
    entries = [{"video_path": "v.mp4", "questions": [mcq("Counting", "A", m="A")]}]
    write_json(tmp_path / "proactive.json", entries)
    write_json(tmp_path / "proactive_50.json", entries)
    with pytest.raises(ValueError, match="also in .*proactive.json; it would count twice"):
        score_predictions(tmp_path)


@pytest.mark.slow
def test_cli_prints_the_table_as_json() -> None:
    command = [sys.executable, "-m", "analysis", "score", "--benchmark", "streamingbench"]
    done = subprocess.run([*command, "--predictions", str(OUTPUTS), "--json"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = EXPECTED_TASKS | EXPECTED_CATEGORIES | {"overall": EXPECTED_OVERALL}
    assert json.loads(done.stdout) == pytest.approx(expected, abs=1e-9)
    missing = OUTPUTS / "nothing.json"
    done = subprocess.run([*command, "--predictions", str(missing)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "nothing.json" in done.stderr
