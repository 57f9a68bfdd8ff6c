"""StreamingBench official scores, computed from official output files the way THUNLP-MT/StreamingBench
`src/data/count.py` computes them (the version after commit 7ff4bb4, 2024-12-11).

The input is what the official inference (`src/eval.py`) writes: the question JSON, with each question's
response stored under the model's name (`"MiniCPM-V": "B"`; proactive: `{"answered": .., "dialog_history": [..]}`).
count.py is given that name as `--model`. Here it is the one question key that is not an annotation field,
or `model=`. A file may also hold an object keyed by part (`real`, `omni`, `sqa`, `proactive`), each value one
official output file: what `python -m analysis export --benchmark streamingbench` writes.

Rules and quirks kept from count.py:
* Multiple choice (real-time, omni-source, ACU, MCU, SQA): correct iff the first character of the raw
  response equals the answer letter, case-sensitive. "B. red" is right; " B", "b", "(B)" and "The answer is B"
  are wrong.
* A question with no recorded response is left out of its task's denominator. The notes say how many, per
  task. count.py skips a missing key in every file and an empty or null response in SQA. An empty or null
  response in a real/omni file makes count.py crash; here it is skipped as in SQA.
* Proactive output: the last `dialog_history` turn decides. `PO` is count.py's time_accuracy:
  |turn time - ground_truth_time_stamp| <= 2 s. `PO_content` is its answer_accuracy: on time, and
  `ground_truth_output` is a case-sensitive substring of the turn's reply.
* Time stamps are the sum of int(part) * 60^k over the ":"-separated parts. So "00:12450" is 12,450 s and
  "00:00:8" is 8 s, as count.py reads the annotations.

count.py prints task accuracies only. The categories and the overall follow formulas inferred from the
published tables, and they match every row checked to 0.01:
Real-Time = micro average over its 10 tasks; Omni-Source = mean of ER, SCU, SD and MA; Contextual = micro
average over ACU, MCU, SQA and PO_content; Overall = micro average over every scored question, with PO_content
for proactive. The leaderboard site's PO is PO_content; the README figures use the timing-only PO, so the notes
also give Contextual and Overall with it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.benchmarks.official import OfficialTable

# `task_type` in the official JSON -> the task code of the published tables
TASK_CODES: dict[str, str] = {
    "Object Recognition": "OP",
    "Causal Reasoning": "CR",
    "Clips Summarize": "CS",
    "Attribute Recognition": "ATP",
    "Event Understanding": "EU",
    "Text-Rich Understanding": "TR",
    "Prospective Reasoning": "PR",
    "Spatial Understanding": "SU",
    "Action Recognition": "ACP",
    "Counting": "CT",
    "Emotion Recognition": "ER",
    "Scene Understanding": "SCU",
    "Source Discrimination": "SD",
    "Multimodal Alignment": "MA",
    "Anomaly Context Understanding": "ACU",
    "Misleading Context Understanding": "MCU",
    "Sequential Question Answering": "SQA",
    "Proactive Output": "PO",
}
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Real-Time": ("OP", "CR", "CS", "ATP", "EU", "TR", "PR", "SU", "ACP", "CT"),
    "Omni-Source": ("ER", "SCU", "SD", "MA"),
    "Contextual": ("ACU", "MCU", "SQA", "PO_content"),
}
PROACTIVE_TOLERANCE_S = 2.0
PARTS = ("real", "omni", "sqa", "proactive")  # the official question files (questions_<part>.json)
# keys a question carries in the official JSONs (stream files add `time`, `audio_path`; stream runs `results`)
ANNOTATION_FIELDS = frozenset(
    {
        "task_type",
        "question",
        "time_stamp",
        "options",
        "answer",
        "required_ability",
        "cause",
        "effect",
        "ground_truth_time_stamp",
        "ground_truth_output",
        "time",
        "audio_path",
        "results",
    }
)


@dataclass(frozen=True)
class ProactiveVerdict:
    """The two proactive-output judgements of count.py; answer_correct implies time_correct."""

    time_correct: bool
    answer_correct: bool


def parse_time_stamp(text: str) -> int:
    """Seconds from an official time stamp: the sum of int(part) * 60^k. "00:12450" -> 12450, "00:00:8" -> 8."""
    return sum(int(part) * 60**k for k, part in enumerate(reversed(text.split(":"))))


def mcq_correct(response: str, answer: str) -> bool:
    """The official rule: the response's first character is the answer letter (no stripping, no case folding)."""
    return response[:1] == answer


def proactive_correct(
    final_time_s: float, final_reply: str | None, ground_truth_time_s: float, ground_truth_output: str
) -> ProactiveVerdict:
    """Judge a proactive question by its last dialog turn: within 2 s (inclusive), and also with the output text."""
    on_time = abs(final_time_s - ground_truth_time_s) <= PROACTIVE_TOLERANCE_S
    return ProactiveVerdict(on_time, on_time and ground_truth_output in (final_reply or ""))


def score_predictions(path: Path, model: str | None = None) -> OfficialTable:
    """Official table of one output file or a folder of them (`*.json`); malformed input raises ValueError."""
    questions = list(_questions(_load(Path(path))))
    model = model or _model_key(questions)
    correct, scored, excluded = Counter[str](), Counter[str](), Counter[str]()
    for where, question in questions:
        task_type = question.get("task_type")
        code = TASK_CODES.get(task_type) if isinstance(task_type, str) else None
        if code is None:
            raise ValueError(f"{where}: field 'task_type': unknown task {task_type!r}")
        if question.get(model) in (None, ""):
            excluded[code] += 1
        elif code == "PO":
            verdict = _judge_proactive(where, question, model)
            scored["PO"] += 1
            scored["PO_content"] += 1
            correct["PO"] += verdict.time_correct
            correct["PO_content"] += verdict.answer_correct
        else:
            scored[code] += 1
            correct[code] += mcq_correct(_text(where, question, model), _text(where, question, "answer"))
    return _table(correct, scored, excluded)


def _load(path: Path) -> Iterator[tuple[str, Any]]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: no *.json output files in this folder")
    for file in files:
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not JSON ({e})") from None
        if isinstance(data, dict) and data and set(data) <= set(PARTS):  # an export: one output file per part
            yield from ((f"{file} [{part}]", value) for part, value in data.items())
        else:
            yield str(file), data


def _questions(files: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, question) for every question; an SQA file nests entries one list deeper (one list per video)."""
    seen: dict[tuple[Any, ...], str] = {}
    for file, data in files:
        if not isinstance(data, list):
            raise ValueError(
                f"{file}: top level: expected a list of entries (or an export keyed by {', '.join(PARTS)}), "
                f"got {type(data).__name__}"
            )
        nested = bool(data) and isinstance(data[0], list)
        groups = [(f"video {v}, ", group) for v, group in enumerate(data)] if nested else [("", data)]
        for prefix, entries in groups:
            if not isinstance(entries, list):
                raise ValueError(f"{file}: {prefix.rstrip(', ')}: expected a list of entries (one video)")
            for e, entry in enumerate(entries):
                if not isinstance(entry, dict) or not isinstance(entry.get("questions"), list):
                    raise ValueError(f"{file}: {prefix}entry {e}: field 'questions': missing or not a list")
                for q, question in enumerate(entry["questions"]):
                    where = f"{file}: {prefix}entry {e}, question {q}"
                    if not isinstance(question, dict):
                        raise ValueError(f"{where}: expected an object")
                    identity = (entry.get("video_path"), question.get("task_type"), question.get("question"))
                    identity += (question.get("time_stamp"),)
                    if seen.setdefault(identity, file) != file:
                        raise ValueError(
                            f"{where}: the same question is also in {seen[identity]}; it would count twice"
                        )
                    yield where, question


def _model_key(questions: list[tuple[str, dict[str, Any]]]) -> str:
    keys = sorted({key for _, question in questions for key in question} - ANNOTATION_FIELDS)
    if len(keys) != 1:
        found = f"found {', '.join(map(repr, keys))}" if keys else "found none"
        raise ValueError(f"expected one model response key besides the annotation fields, {found}; pass model=")
    return keys[0]


def _text(where: str, question: dict[str, Any], field: str) -> str:
    value = question.get(field)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r}: expected a string, got {value!r}")
    return value


def _judge_proactive(where: str, question: dict[str, Any], model: str) -> ProactiveVerdict:
    record = question[model]
    history = record.get("dialog_history") if isinstance(record, dict) else None
    if not isinstance(history, list) or not history or not isinstance(history[-1], dict):
        raise ValueError(f"{where}: field '{model}.dialog_history': expected a non-empty list of turns")
    last = history[-1]
    if isinstance(last.get("time"), bool) or not isinstance(last.get("time"), int | float):
        raise ValueError(
            f"{where}: field '{model}.dialog_history[-1].time': expected seconds, got {last.get('time')!r}"
        )
    if not isinstance(last.get("content"), str | None):
        raise ValueError(f"{where}: field '{model}.dialog_history[-1].content': expected a string or null")
    stamp = _text(where, question, "ground_truth_time_stamp")
    try:
        ground_truth_s = parse_time_stamp(stamp)
    except ValueError:
        raise ValueError(f"{where}: field 'ground_truth_time_stamp': unreadable {stamp!r}") from None
    return proactive_correct(
        last["time"], last.get("content"), ground_truth_s, _text(where, question, "ground_truth_output")
    )


def _table(correct: Counter[str], scored: Counter[str], excluded: Counter[str]) -> OfficialTable:
    order = [code for codes in CATEGORIES.values() for code in codes]
    order.insert(order.index("PO_content"), "PO")
    tasks = {code: 100 * correct[code] / scored[code] for code in order if scored[code]}

    def micro(codes: tuple[str, ...] | list[str]) -> float:
        return 100 * sum(correct[c] for c in codes) / sum(scored[c] for c in codes)

    categories: dict[str, float] = {}
    for name, codes in CATEGORIES.items():
        present = [code for code in codes if code in tasks]
        if present and name == "Omni-Source":
            categories[name] = sum(tasks[code] for code in present) / len(present)
        elif present:
            categories[name] = micro(present)
    if not categories:
        raise ValueError("no question has a recorded response: nothing to score")
    overall_codes = [code for code in tasks if code != "PO"]
    notes = []
    if excluded:
        per_task = ", ".join(f"{code} {n}" for code, n in sorted(excluded.items(), key=lambda kv: order.index(kv[0])))
        notes.append(
            f"{sum(excluded.values())} questions without a recorded response left out of the denominators ({per_task})"
        )
    if missing := [code for code in order if code not in tasks]:
        notes.append(f"no scored questions for {', '.join(missing)}: categories and overall cover the other tasks")
    if "PO" in tasks:
        context = [code for code in CATEGORIES["Contextual"] if code in tasks]
        timing = {"PO_content": "PO"}
        notes.append(
            "Contextual and overall use PO_content (timing and output text, the leaderboard site's rule); with the "
            f"timing-only PO of the README figures they are {micro([timing.get(c, c) for c in context]):.2f} and "
            f"{micro([timing.get(c, c) for c in overall_codes]):.2f}"
        )
    counts = {code: scored[code] for code in tasks}
    return OfficialTable("StreamingBench", tasks, categories, micro(overall_codes), counts, tuple(notes))
