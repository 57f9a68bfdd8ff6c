"""OVO-Bench official scoring, reproduced as pure functions so our numbers compare with the leaderboard.

Source: JoeLeelyf/OVO-Bench v2 (2025-03-23 onwards), `utils/OVOBenchScore.py` class `OVOBenchOfflineScore`
and `score.py`. Input is the official results format written by `inference.py`: a JSON object with lists
`backward`, `realtime` and `forward`; MCQ records carry `task`, `response` and `ground_truth` (a letter);
forward records are the annotation item with `response` added to every `test_info` probe.

Quirks reproduced on purpose (they are what the published numbers were computed with):
- MCQ: correct iff the response is not None and the ground-truth letter is a case-sensitive substring of the
  raw response, so "Answer: C" passes for A (capital A) and "b" fails for B; a list response (the raw Qwen2-VL
  adapter returns one) is tested by element equality, as Python's `in` does.
- REC: every `\\d+` run is joined with no separator and compared with `str(count)`: "1, 2" reads as "12",
  number words read as "".
- SSR/CRR: exactly "N" (type 0) or "Y" (type 1) passes; otherwise "No"/"Yes" must be a case-sensitive substring,
  so "Not sure" passes for No and "yes" fails.
- Forward tasks are scored per probe (`test_info` entry), MCQ tasks per item.
- A folder is read like `score.py` reads `results/<model>/`: every entry is a results file and all lists are
  concatenated, so an item present in two files counts twice.
- Category = unweighted mean of its task accuracies; overall ("Total Avg.") = mean of the three categories.

Where the official script crashes we raise ValueError instead (a non-JSON file in the folder, a list response to
REC, a task with no probes) and we check what it assumes (each task in its own list, ground truth a letter,
count an int, type 0/1). One deliberate difference: with a category absent the v2 `score()` dies with
UnboundLocalError before printing "Total Avg."; we average the categories present and say so in the notes.

Plain float arithmetic, not torch: a handful of means, computed in float64 the way the official script does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from harness.benchmarks.official import OfficialTable

BENCHMARK = "OVO-Bench"
MCQ_CATEGORIES = {"Backward": ("EPM", "ASI", "HLD"), "Real-time": ("OCR", "ACR", "ATR", "STU", "FPD", "OJR")}
FORWARD_TASKS = ("REC", "SSR", "CRR")
CATEGORIES = {**MCQ_CATEGORIES, "Forward": FORWARD_TASKS}  # official category names, in the printed order
RESULT_LISTS = {"backward": "Backward", "realtime": "Real-time", "forward": "Forward"}  # results key -> category

Response = str | list | None


def score_predictions(path: Path) -> OfficialTable:
    """The official OVO-Bench table for one results JSON file or a folder of them (every entry is read)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such results file or folder")
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: empty folder, no results files to score")
    scores: dict[str, list[int]] = {}
    seen: set[tuple[str, str]] = set()
    repeated = 0
    for file in files:
        for list_name, items in _load(file).items():
            for index, item in enumerate(items):
                task, item_scores = _score_item(file, list_name, index, item)
                scores.setdefault(task, []).extend(item_scores)
                key = (list_name, repr(item.get("id")))
                repeated += "id" in item and key in seen
                seen.add(key)
    if not scores:
        raise ValueError(f"{path}: no items in 'backward', 'realtime' or 'forward'")
    return _table(scores, files, repeated)


def mcq_correct(response: Response, letter: str) -> bool:
    """Official MCQ rule: `letter in response` on the raw response (substring, or element of a list)."""
    return response is not None and letter in response


def rec_correct(response: str | None, count: int) -> bool:
    """Official REC rule: all digit runs joined with no separator equal `str(count)`."""
    return response is not None and "".join(re.findall(r"\d+", response)) == str(count)


def yes_no_correct(response: Response, type_: int) -> bool:
    """Official SSR/CRR rule: exact "N"/"Y", else "No" (type 0) / "Yes" (type 1) contained in the response."""
    if (response == "N" and type_ == 0) or (response == "Y" and type_ == 1):
        return True
    return response is not None and ("No" if type_ == 0 else "Yes") in response


def _load(file: Path) -> dict[str, list]:
    if not file.is_file():
        raise ValueError(f"{file}: not a results file (score.py reads every entry of the folder as one)")
    try:
        results = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not a JSON results file ({e})") from e
    if not isinstance(results, dict):
        raise ValueError(f"{file}: expected an object with lists {list(RESULT_LISTS)}, got {type(results).__name__}")
    for list_name in RESULT_LISTS:
        if not isinstance(results.get(list_name), list):
            raise ValueError(f"{file}: '{list_name}' must be a list (missing or {type(results.get(list_name))})")
    return {list_name: results[list_name] for list_name in RESULT_LISTS}


def _score_item(file: Path, list_name: str, index: int, item: Any) -> tuple[str, list[int]]:
    """(task, 0/1 scores): one score for an MCQ item, one per probe for a forward item."""
    where = f"{file}: {list_name}[{index}]"
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
    where += f" (id {item.get('id')})"
    task = item.get("task")
    category = RESULT_LISTS[list_name]
    if task not in CATEGORIES[category]:
        raise ValueError(f"{where}: 'task' {task!r} is not one of {category}'s tasks {CATEGORIES[category]}")
    if category != "Forward":
        letter = item.get("ground_truth")
        if not (isinstance(letter, str) and re.fullmatch(r"[A-Z]", letter)):
            raise ValueError(f"{where}: 'ground_truth' must be one uppercase letter, got {letter!r}")
        return task, [int(mcq_correct(_response(where, item, lists_ok=True), letter))]
    probes = item.get("test_info")
    if not isinstance(probes, list):
        raise ValueError(f"{where}: 'test_info' must be a list, got {type(probes).__name__}")
    return task, [_score_probe(f"{where}: test_info[{j}]", task, probe) for j, probe in enumerate(probes)]


def _score_probe(where: str, task: str, probe: Any) -> int:
    if not isinstance(probe, dict):
        raise ValueError(f"{where}: expected an object, got {type(probe).__name__}")
    if task == "REC":
        count = probe.get("count")
        if not _is_int(count):
            raise ValueError(f"{where}: 'count' must be an int, got {count!r}")
        # the official REC scorer runs re.findall on the response: a list crashes it
        return int(rec_correct(_response(where, probe, lists_ok=False), count))
    type_ = probe.get("type")
    if not (_is_int(type_) and type_ in (0, 1)):
        raise ValueError(f"{where}: 'type' must be 0 or 1, got {type_!r}")
    return int(yes_no_correct(_response(where, probe, lists_ok=True), type_))


def _response(where: str, record: dict, lists_ok: bool) -> Response:
    if "response" not in record:
        raise ValueError(f"{where}: missing 'response' (null for a failed call)")
    response = record["response"]
    allowed = (str, list) if lists_ok else (str,)
    if response is not None and not isinstance(response, allowed):
        kinds = "a string, a list or null" if lists_ok else "a string or null"
        raise ValueError(f"{where}: 'response' must be {kinds}, got {type(response).__name__}")
    return response


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _table(scores: dict[str, list[int]], files: list[Path], repeated: int) -> OfficialTable:
    tasks, counts, categories, notes = {}, {}, {}, [f"read {len(files)} results file(s): {[f.name for f in files]}"]
    for category, codes in CATEGORIES.items():
        present = [code for code in codes if code in scores]
        if not present:
            continue
        fractions = []
        for code in present:
            if not scores[code]:
                raise ValueError(f"task {code} has items but no probes (the official script divides by zero)")
            fractions.append(sum(scores[code]) / len(scores[code]))
            tasks[code], counts[code] = 100 * fractions[-1], len(scores[code])
        categories[category] = 100 * sum(fractions) / len(fractions)
        if len(present) < len(codes):
            missing = [code for code in codes if code not in scores]
            notes.append(f"{category} averages {len(present)} of its {len(codes)} tasks (missing {missing})")
    if len(categories) < len(CATEGORIES):
        missing = [name for name in CATEGORIES if name not in categories]
        notes.append(
            f"no items for {missing}: overall is the mean of the {len(categories)} categories present; "
            "the official v2 score() stops with UnboundLocalError before printing 'Total Avg.'"
        )
    if repeated:
        notes.append(f"{repeated} item(s) repeat a (list, id) already read and are counted again, as score.py does")
    overall = sum(categories.values()) / len(categories)
    return OfficialTable(BENCHMARK, tasks, categories, overall, counts, tuple(notes))
