"""OVO-Bench official scoring on hand-written responses whose official score is worked out by hand."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.benchmarks.ovo_bench_scoring import mcq_correct, rec_correct, score_predictions, yes_no_correct

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "ovo_bench" / "results_all_tasks.json"

# Hand-computed from the fixture (1 = official rule passes):
#   EPM "B."/B 1, "Answer: C"/A 1 (capital A), "c"/C 0       -> 2/3 = 66.667
#   ASI null/D 0, "(A)"/A 1                                   -> 1/2 = 50
#   HLD ["B"]/B 1, ["C."]/C 0 (list: element equality)        -> 1/2 = 50
#   Backward = (2/3 + 1/2 + 1/2) / 3 = 5/9                    = 55.556
#   OCR "A"/A 1, "The answer is D"/B 0                        -> 1/2 = 50
#   ACR "C"/C 1, "D"/D 1                                      -> 2/2 = 100
#   ATR "b"/A 0, ""/B 0                                       -> 0/2 = 0
#   STU "A"/A 1, "B"/B 1, "C"/D 0                             -> 2/3 = 66.667
#   FPD "Option B"/B 1, "Option B"/A 0                        -> 1/2 = 50
#   OJR "C. a red cup"/C 1, null/A 0                          -> 1/2 = 50
#   Real-time = (1/2 + 1 + 0 + 2/3 + 1/2 + 1/2) / 6 = 19/36   = 52.778
#   REC probes "1"/1 1, "3 times"/3 1, "1, 2"/2 0 ("12"), "two"/2 0, "0"/0 1   -> 3/5 = 60
#   SSR probes "Y"/1 1, "N"/0 1, "Not really"/0 1, "yes"/1 0, "Y"/0 0, "Yes, they are"/1 1 -> 4/6 = 66.667
#   CRR probes "No"/0 1, "None of the frames show it"/0 1, "no"/1 0, "Yes"/1 1, null/1 0,
#              "N"/0 1, ["Yes"]/1 1, "no"/0 0                 -> 5/8 = 62.5
#   Forward = (3/5 + 2/3 + 5/8) / 3 = (72 + 80 + 75) / 360 = 227/360 = 63.056
#   overall = (200/360 + 190/360 + 227/360) / 3 = 617/1080    = 57.130
# Per item instead of per probe, REC would be (2/3 + 1/2) / 2 = 58.33 and SSR (3/4 + 1/2) / 2 = 62.5.
EXPECTED_TASKS = {
    "EPM": 200 / 3,
    "ASI": 50.0,
    "HLD": 50.0,
    "OCR": 50.0,
    "ACR": 100.0,
    "ATR": 0.0,
    "STU": 200 / 3,
    "FPD": 50.0,
    "OJR": 50.0,
    "REC": 60.0,
    "SSR": 200 / 3,
    "CRR": 62.5,
}
EXPECTED_CATEGORIES = {"Backward": 500 / 9, "Real-time": 1900 / 36, "Forward": 22700 / 360}
EXPECTED_OVERALL = 61700 / 1080
EXPECTED_COUNTS = {"EPM": 3, "ASI": 2, "HLD": 2, "OCR": 2, "ACR": 2, "ATR": 2, "STU": 3, "FPD": 2, "OJR": 2}
EXPECTED_COUNTS |= {"REC": 5, "SSR": 6, "CRR": 8}  # forward tasks count probes


@pytest.mark.parametrize(
    "response, letter, correct",
    [
        ("B", "B", True),
        ("B.", "B", True),
        ("(B)", "B", True),
        ("The answer is B", "B", True),
        ("Answer: C", "A", True),  # the capital A of "Answer" contains the letter
        ("b", "B", False),  # case-sensitive
        (" c ", "C", False),
        ("", "A", False),
        (None, "A", False),
        (["B"], "B", True),  # a list response: element equality
        (["B."], "B", False),
        (["A", "B"], "B", True),
    ],
)
def test_mcq_rule(response, letter, correct):
    assert mcq_correct(response, letter) is correct


@pytest.mark.parametrize(
    "response, count, correct",
    [
        ("3", 3, True),
        ("3 times", 3, True),
        ("They did it 3 times.", 3, True),
        ("10", 10, True),
        ("1, 2", 2, False),  # digit runs are joined: "12"
        ("1, 2", 12, True),
        ("three", 3, False),  # number words read as ""
        ("0", 0, True),
        ("", 0, False),
        (None, 0, False),
        ("03", 3, False),  # string comparison with str(count)
    ],
)
def test_rec_rule(response, count, correct):
    assert rec_correct(response, count) is correct


@pytest.mark.parametrize(
    "response, type_, correct",
    [
        ("N", 0, True),
        ("Y", 1, True),
        ("N", 1, False),
        ("Y", 0, False),
        ("No", 0, True),
        ("Yes", 1, True),
        ("Not yet", 0, True),  # "No" inside "Not"
        ("None", 0, True),
        ("Now it is", 0, True),
        ("no", 0, False),  # case-sensitive
        ("yes", 1, False),
        ("YES", 1, False),
        ("Yes", 0, False),
        ("No, but Yes later", 1, True),
        (" Y", 1, False),  # exact "Y" only
        (None, 0, False),
        (None, 1, False),
        (["Yes"], 1, True),  # list: element equality
        (["Yes."], 1, False),
    ],
)
def test_yes_no_rule(response, type_, correct):
    assert yes_no_correct(response, type_) is correct


def test_fixture_scores_match_hand_computation():
    table = score_predictions(FIXTURE)
    assert table.benchmark == "OVO-Bench"
    assert list(table.tasks) == list(EXPECTED_TASKS)
    assert table.tasks == pytest.approx(EXPECTED_TASKS)
    assert list(table.categories) == ["Backward", "Real-time", "Forward"]
    assert table.categories == pytest.approx(EXPECTED_CATEGORIES)
    assert table.overall == pytest.approx(EXPECTED_OVERALL)
    assert round(table.overall, 2) == 57.13
    assert table.counts == EXPECTED_COUNTS
    assert table.notes == ("read 1 results file(s): ['results_all_tasks.json']",)


def test_folder_concatenates_every_file_and_double_counts(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "run_a.json")
    # a second run holding only the (correct) EPM item 0 again
    epm_item = json.loads(FIXTURE.read_text())["backward"][0]
    (tmp_path / "run_b.json").write_text(json.dumps({"backward": [epm_item], "realtime": [], "forward": []}))
    table = score_predictions(tmp_path)
    # EPM 3/4 = 75; Backward (3/4 + 1/2 + 1/2) / 3 = 7/12 = 58.333;
    # overall (210/360 + 190/360 + 227/360) / 3 = 627/1080 = 58.056
    assert table.tasks["EPM"] == pytest.approx(75.0)
    assert table.counts["EPM"] == 4
    assert table.categories["Backward"] == pytest.approx(700 / 12)
    assert table.overall == pytest.approx(62700 / 1080)
    assert table.notes[0] == "read 2 results file(s): ['run_a.json', 'run_b.json']"
    assert "1 item(s) repeat" in table.notes[1]


def test_the_same_file_twice_counts_every_item_twice(tmp_path):
    for name in ("a.json", "b.json"):
        shutil.copy(FIXTURE, tmp_path / name)
    table = score_predictions(tmp_path)
    assert table.counts == {code: 2 * n for code, n in EXPECTED_COUNTS.items()}
    assert table.overall == pytest.approx(EXPECTED_OVERALL)  # means are unchanged by an exact duplicate
    assert "26 item(s) repeat" in table.notes[1]


def test_absent_category_is_left_out_of_the_overall_with_a_note(tmp_path):
    results = json.loads(FIXTURE.read_text())
    results["forward"] = [item for item in results["forward"] if item["task"] != "SSR"]
    results["realtime"] = []
    (tmp_path / "partial.json").write_text(json.dumps(results))
    table = score_predictions(tmp_path / "partial.json")
    assert list(table.categories) == ["Backward", "Forward"]
    # Forward = (3/5 + 5/8) / 2 = 49/80 = 61.25; overall = (5/9 + 49/80) / 2
    assert table.categories["Forward"] == pytest.approx(61.25)
    assert table.overall == pytest.approx((500 / 9 + 61.25) / 2)
    assert any("Forward averages 2 of its 3 tasks (missing ['SSR'])" in note for note in table.notes)
    assert any("no items for ['Real-time']" in note and "UnboundLocalError" in note for note in table.notes)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["realtime"][3].pop("response"), "realtime[3] (id 10): missing 'response'"),
        (lambda r: r["backward"][1].update(ground_truth=0), "backward[1] (id 1): 'ground_truth' must be one"),
        (lambda r: r["backward"][0].update(task="OCR"), "backward[0] (id 0): 'task' 'OCR' is not one of Backward"),
        (lambda r: r["forward"][0]["test_info"][2].update(count="2"), "forward[0] (id 20): test_info[2]: 'count'"),
        (lambda r: r["forward"][1]["test_info"][0].update(response=["2"]), "test_info[0]: 'response' must be a str"),
        (lambda r: r["forward"][5]["test_info"][1].update(type=2), "forward[5] (id 25): test_info[1]: 'type' must"),
        (lambda r: r["realtime"][0].update(response=3), "realtime[0] (id 7): 'response' must be a string, a list"),
        (lambda r: r.pop("forward"), "'forward' must be a list"),
    ],
)
def test_malformed_input_names_file_list_item_and_field(tmp_path, edit, message):
    results = json.loads(FIXTURE.read_text())
    edit(results)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(results))
    with pytest.raises(ValueError, match="bad.json") as error:
        score_predictions(bad)
    assert message in str(error.value)


def test_a_non_json_entry_in_the_folder_is_an_error(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "run.json")
    (tmp_path / "notes.txt").write_text("not results")
    with pytest.raises(ValueError, match=r"notes\.txt: not a JSON results file"):
        score_predictions(tmp_path)


def test_a_missing_path_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        score_predictions(tmp_path / "nowhere.json")


def test_cli_prints_the_flat_official_json():
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis",
            "score",
            "--benchmark",
            "ovo_bench",
            "--predictions",
            str(FIXTURE),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    flat = json.loads(process.stdout)
    assert list(flat) == [*EXPECTED_TASKS, "Backward", "Real-time", "Forward", "overall"]
    assert flat == pytest.approx({**EXPECTED_TASKS, **EXPECTED_CATEGORIES, "overall": EXPECTED_OVERALL})


def test_cli_reports_a_malformed_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"backward": [{"id": 4, "task": "EPM", "ground_truth": "A"}], "realtime": []}))
    process = subprocess.run(
        [sys.executable, "-m", "analysis", "score", "--benchmark", "ovo_bench", "--predictions", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2
    assert "bad.json" in process.stderr and "'forward' must be a list" in process.stderr
