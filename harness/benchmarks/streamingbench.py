"""StreamingBench adapter: the official question files read as streams, asked and scored as the official code does.

One `StreamSample` per video of each part (real-time, omni-source, sequential QA, proactive output); every
question is one query, id `<part>-<entry>-<question>` (SQA: `sqa-<video>-<entry>-<question>`, the file nests
one list per video). A multiple-choice query records the official clip as its visible span: `[t - context_s, t]`
in whole seconds (`[0, t]` with `context_s=-1`), as `src/utils/video_execution.py` cuts it. A proactive query is
polled each second from `time_stamp + 1` to `ground_truth_time_stamp + 4` on the clip from `time_stamp` on.
Responses are kept raw and scored with count.py's rules (`streamingbench_scoring`); `to_official_results` turns a
job's records back into the official output files, so that scorer (or count.py) can re-score them. Nothing is
downloaded: the question files and videos are the user's copies (datasets/streamingbench/README.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.benchmarks import robust
from harness.benchmarks.base import DATASETS, BadItem, PromptsConfig
from harness.benchmarks.fields import Fields, read_json, show
from harness.benchmarks.streamingbench_prompts import OWN_TEMPLATES, fields, fill, read_templates
from harness.benchmarks.streamingbench_scoring import (
    CATEGORIES,
    PARTS,
    PROACTIVE_TOLERANCE_S,
    TASK_CODES,
    mcq_correct,
    parse_time_stamp,
    proactive_correct,
)
from harness.benchmarks.validate import check_video
from harness.errors import ConfigError, DataError
from harness.records import Query, ResultRecord, StreamSample, Truth

TASKS = tuple(TASK_CODES.values())  # the published tables' order
PART_TASKS = {
    "real": CATEGORIES["Real-Time"],
    "omni": ("ER", "SCU", "SD", "MA", "ACU", "MCU"),  # ACU and MCU are Contextual but live in the omni file
    "sqa": ("SQA",),
    "proactive": ("PO",),
}
# questions per task in the official files (benchmarks.md 2.2); PO: questions_proactive_50.json (all 250 in
# questions_proactive.json, which validate then reports as +199)
PUBLISHED_COUNTS = {
    "OP": 367, "CR": 128, "CS": 317, "ATP": 306, "EU": 161, "TR": 321, "PR": 108, "SU": 246, "ACP": 353, "CT": 193,
    "ER": 250, "SCU": 250, "SD": 250, "MA": 250, "ACU": 250, "MCU": 250, "SQA": 250, "PO": 51,
}  # fmt: skip
MODEL_KEY = "harness"  # the key our responses are stored under in the official output files
MCQ_SUFFIX = "\n\nThe best option is:"  # appended after the real/omni template, as StreamingBench.py does
POLL_AFTER_S, POLL_UNTIL_S = 1, 4  # proactive polls run from time_stamp + 1 to ground_truth_time_stamp + 4


@dataclass(frozen=True)
class AnnotationsConfig:
    """The official question files, relative to the dataset root (src/data/ of the official repository)."""

    real: str = "questions_real.json"
    omni: str = "questions_omni.json"
    sqa: str = "questions_sqa.json"
    proactive: str = "questions_proactive_50.json"  # the leaderboard's 51 questions; questions_proactive.json: 250


@dataclass(frozen=True)
class StreamingBenchConfig:
    name: str = "streamingbench"
    root: str = "datasets/streamingbench"  # relative paths resolve against the current working directory
    annotations: AnnotationsConfig = field(default_factory=AnnotationsConfig)
    videos: str = ""  # empty: a video_path resolves against its question file's folder; else <root>/<videos>/<name>
    parts: list[str] = field(default_factory=list)  # real, omni, sqa, proactive; empty: all four
    tasks: list[str] = field(default_factory=list)  # task codes; empty: all 18
    context_s: float = 60.0  # seconds of video before a question (the main table); -1: all of it ([0, t])
    on_bad_item: BadItem = BadItem.fail  # a missing video or a question past its end: stop, or skip the item
    prompts: PromptsConfig = field(default_factory=PromptsConfig)  # official_dir: a checkout (src/benchmark/*.py)


@DATASETS.register("streamingbench", StreamingBenchConfig)
class StreamingBench:
    """Adapter of StreamingBench: official question files, prompts, clips, proactive polling and scoring."""

    tasks = TASKS

    def __init__(self, cfg: StreamingBenchConfig) -> None:
        for key, chosen, allowed in (("parts", cfg.parts, PARTS), ("tasks", cfg.tasks, TASKS)):
            unknown = [x for x in chosen if x not in allowed]
            if unknown:
                raise ConfigError(f"dataset.{key}={unknown}: unknown; choose from {', '.join(allowed)}")
        if not (cfg.context_s > 0 or cfg.context_s == -1):
            raise ConfigError(f"dataset.context_s={cfg.context_s}: use seconds > 0 (60: the main table) or -1 (all)")
        self.cfg = cfg
        self.parts = tuple(p for p in PARTS if p in cfg.parts) if cfg.parts else PARTS
        offered = {task for part in self.parts for task in PART_TASKS[part]}
        self.tasks = tuple(t for t in TASKS if t in offered and (not cfg.tasks or t in cfg.tasks))
        if not self.tasks:
            raise ConfigError(f"dataset.tasks={list(cfg.tasks)}: none is in the parts {list(self.parts)}")
        official = cfg.prompts.official_dir
        self.templates = read_templates(Path(official)) if official else OWN_TEMPLATES
        self._contexts: dict[str, str] = {}  # SQA query id -> the context of the questions before it

    def annotation_path(self, part: str) -> Path:
        return Path(self.cfg.root) / getattr(self.cfg.annotations, part)

    def load(self) -> list[StreamSample]:
        """One sample per video of each selected part, queries in time order."""
        samples, owners = [], {}
        for part in self.parts:
            path = self.annotation_path(part)
            entries = read_part(path, part)
            if part == "sqa":
                self._contexts.update(self._sqa_contexts(entries))
            by_video: dict[str, list[tuple[tuple[int, ...], dict[str, Any]]]] = {}
            for key, entry in entries:
                by_video.setdefault(entry["video_path"], []).append((key, entry))
            for video_path, entries in by_video.items():
                sample_id = f"{part}-{re.sub(r'[^A-Za-z0-9._-]', '_', Path(video_path).stem)}"
                if sample_id in owners:
                    raise DataError(f"{path}: videos {owners[sample_id]!r} and {video_path!r} share the id {sample_id}")
                owners[sample_id] = video_path
                sample = self._sample(sample_id, part, self._video(path, video_path), entries)
                if sample.queries:
                    samples.append(sample)
        return samples

    def prompt(self, query: Query) -> str:
        """The official template of the query's part, filled the way the official code fills it."""
        if query.kind == "proactive":
            return fill(self.templates.proactive, query.text)
        if query.task == "SQA":
            if query.id not in self._contexts:
                raise KeyError(f"SQA query {query.id}: not loaded by this adapter (call load() first)")
            return fill(self.templates.sqa, self._contexts[query.id], query.text, *query.options)
        return fill(self.templates.mcq, query.text, *query.options) + MCQ_SUFFIX

    def fired(self, text: str) -> bool:
        """The official test of a trigger reply: "yes" anywhere in it, in any case."""
        return "yes" in text.strip().lower()

    def parse(self, query: Query, text: str) -> str | None:
        """The raw response: the official rules score the raw text."""
        return text

    def score(
        self, query: Query, truth: Truth, parsed: str | None, response_time_s: float | None
    ) -> tuple[float, dict[str, float]]:
        """count.py's rules. Proactive: `score` is its answer_accuracy (on time and with the output text, the
        leaderboard's PO); subscores `time` (its time_accuracy) and `content`. Otherwise the first character of
        the raw reply is the answer letter; `robust` reads the letter the reply commits to."""
        if query.kind == "proactive":
            if response_time_s is None or parsed is None:  # never fired: its last poll, at g + 4, is late
                return 0.0, {"time": 0.0, "content": 0.0}
            verdict = proactive_correct(response_time_s, parsed, truth.evidence_s[0], truth.answer)
            return float(verdict.answer_correct), {
                "time": float(verdict.time_correct),
                "content": float(verdict.answer_correct),
            }
        correct = parsed is not None and mcq_correct(parsed, truth.answer)
        return float(correct), {"robust": float(robust.letter(parsed, query.options, 4) == truth.answer)}

    def _video(self, annotation: Path, video_path: str) -> Path:
        path = Path(video_path)
        if path.is_absolute():
            return path
        if self.cfg.videos:
            return Path(self.cfg.root) / self.cfg.videos / path.name
        return annotation.parent / path

    def _sample(
        self, sample_id: str, part: str, video: Path, entries: list[tuple[tuple[int, ...], dict[str, Any]]]
    ) -> StreamSample:
        queries, truths = [], {}
        for key, entry in entries:
            for index, question in enumerate(entry["questions"]):
                query_id, task = make_id(part, key, index), TASK_CODES[question["task_type"]]
                if task not in self.tasks:
                    continue
                if part == "proactive":
                    query, truth = self._proactive(query_id, question)
                else:
                    query, truth = self._mcq(query_id, task, question)
                queries.append(query)
                truths[query_id] = truth
        queries.sort(key=lambda q: q.time_s)
        ends = [t for q in queries for t in (q.time_s, q.clip_end_s, *(q.poll_window_s or ())) if t is not None]
        duration = check_video(str(video)).duration_s or max(ends, default=0.0)
        extras = {"part": part, "entries": entries}
        return StreamSample(sample_id, str(video), duration, tuple(queries), truths, extras)

    def _mcq(self, query_id: str, task: str, question: dict[str, Any]) -> tuple[Query, Truth]:
        time_s = parse_time_stamp(question["time_stamp"])
        start_s = max(0, time_s - self.cfg.context_s) if self.cfg.context_s > 0 else 0
        shown = shown_options(question["options"])
        query = Query(query_id, float(time_s), question["question"], task, "mcq", shown,
                      clip_end_s=float(int(time_s)), clip_start_s=float(int(start_s)))  # fmt: skip
        return query, Truth(query_id, question["answer"])

    def _proactive(self, query_id: str, question: dict[str, Any]) -> tuple[Query, Truth]:
        start_s = parse_time_stamp(question["time_stamp"])
        truth_s = parse_time_stamp(question["ground_truth_time_stamp"])
        trigger = fill(self.templates.proactive, self.templates.trigger.format(**fields(question)))
        window = (float(start_s + POLL_AFTER_S), float(truth_s + POLL_UNTIL_S))
        query = Query(query_id, float(start_s), question["question"], "PO", "proactive", trigger=trigger,
                      clip_start_s=float(start_s), poll_window_s=window)  # fmt: skip
        on_time = (truth_s - PROACTIVE_TOLERANCE_S, truth_s + PROACTIVE_TOLERANCE_S)
        return query, Truth(query_id, question["ground_truth_output"], (float(truth_s),), on_time)

    def _sqa_contexts(self, entries: list[tuple[tuple[int, ...], dict[str, Any]]]) -> dict[str, str]:
        """What StreamingBenchSQA.py prepends to each question: nothing at a video's first question, then every
        earlier question of that video (one list of the file) with its time stamp, options and ground-truth
        answer, in file order."""
        contexts, earlier, video = {}, [], None
        for key, entry in entries:
            if key[0] != video:
                earlier, video = [], key[0]
            for index, question in enumerate(entry["questions"]):
                text = "".join(self.templates.context_entry.format(**e) for e in earlier)
                contexts[make_id("sqa", key, index)] = self.templates.context_header + text if earlier else ""
                earlier.append(fields(question, shown_options(question["options"])))
        return contexts


def make_id(part: str, key: tuple[int, ...], question: int) -> str:
    """`<part>-<entry>-<question>`; SQA keys are (video, entry)."""
    return "-".join([part, *map(str, key), str(question)])


def shown_options(options: list[str]) -> tuple[str, ...]:
    """The four option lines the official prompt shows: the first four items, prefixed "A. ".."D. " unless the
    first already starts with "A." (extra items, e.g. a stray "E. .", are dropped by the template)."""
    if options[0].startswith("A."):
        return tuple(options[:4])
    return tuple(f"{letter}. {text}" for letter, text in zip("ABCD", options[:4], strict=True))


def to_official_results(
    samples: Iterable[StreamSample], records: Iterable[ResultRecord], model: str = MODEL_KEY
) -> dict[str, list]:
    """The official output of each part, keyed by part: the question file with each question's response under
    `model` (proactive: {"answered", "dialog_history"}). Only the job's questions are written; a question with
    no record or an error record gets no response, so the official scorer leaves it out."""
    kept = {r.query_id: r for r in records if not r.has_error}
    found: dict[str, dict[tuple[int, ...], dict[str, Any]]] = {}
    for sample in samples:
        part, asked = sample.extras["part"], {q.id: q for q in sample.queries}
        for key, entry in sample.extras["entries"]:
            questions = []
            for index, question in enumerate(entry["questions"]):
                query_id = make_id(part, key, index)
                if query_id not in asked:
                    continue
                question, record = dict(question), kept.get(query_id)
                if record is not None and part == "proactive":
                    question[model] = _proactive_output(asked[query_id], record)
                elif record is not None:
                    question[model] = record.response
                questions.append(question)
            if questions:
                found.setdefault(part, {})[key] = {**entry, "questions": questions}
    results: dict[str, list] = {}
    for part in PARTS:
        entries = sorted(found.get(part, {}).items())
        if entries and part == "sqa":  # one list of entries per video, in file order
            videos: dict[int, list] = {}
            for key, entry in entries:
                videos.setdefault(key[0], []).append(entry)
            results[part] = [videos[v] for v in sorted(videos)]
        elif entries:
            results[part] = [entry for _, entry in entries]
    return results


def _proactive_output(query: Query, record: ResultRecord) -> dict[str, Any]:
    """The final turn decides count.py's verdict: the bare question's reply at the poll that fired, or, if none
    fired, an empty reply to the trigger at the last poll (ground truth + 4 s). Earlier polls are not recorded."""
    fired = record.response is not None and record.response_time_s is not None
    if fired:
        time_s, asked, reply = record.response_time_s, query.text, record.response
    else:
        time_s, asked, reply = query.poll_window_s[1] if query.poll_window_s else query.time_s, query.trigger, ""
    at = _seconds(time_s)
    turns = [{"role": "user", "content": asked, "time": at}, {"role": "assistant", "content": reply, "time": at}]
    return {"answered": at if fired else False, "dialog_history": turns}


def _seconds(value: float) -> float | int:
    """Whole seconds as int, as the official polling loop logs them."""
    return int(value) if float(value).is_integer() else value


# ---- reading the question files


def read_part(path: Path, part: str) -> list[tuple[tuple[int, ...], dict[str, Any]]]:
    """(key, entry) of every entry of one question file, each field checked; key = (entry,) or, for SQA,
    (video, entry). DataError names the file, the entry, the question and the field."""
    data = read_json(
        path,
        "question file not found. Expected the official src/data/questions_*.json files there, with the videos "
        "in videos/ beside them (or set dataset.root / dataset.annotations.* / dataset.videos, or dataset.parts "
        "to run fewer parts); see datasets/streamingbench/README.md",
    )
    if not isinstance(data, list):
        raise DataError(f"{path}: must be a list of entries (the official format), got {show(data)}")
    if part != "sqa":
        return [((e,), _entry(raw, f"{path}, entry {e}", part)) for e, raw in enumerate(data)]
    out = []
    for v, video in enumerate(data):
        if not isinstance(video, list):
            raise DataError(f"{path}, video {v}: must be a list of entries (one per segment), got {show(video)}")
        out += [((v, e), _entry(raw, f"{path}, video {v}, entry {e}", part)) for e, raw in enumerate(video)]
    return out


def _entry(raw: Any, where: str, part: str) -> dict[str, Any]:
    f = Fields(raw, where)
    f.get("video_path", str)
    questions = f.get("questions", list)
    for q, question in enumerate(questions):
        _question(Fields(question, f"{where}, question {q}"), part)
    return raw


def _question(f: Fields, part: str) -> None:
    task_type = f.get("task_type", str)
    if TASK_CODES.get(task_type) not in PART_TASKS[part]:
        names = [name for name, code in TASK_CODES.items() if code in PART_TASKS[part]]
        raise f.fail("task_type", f"must be a task of the {part} file ({', '.join(names)}), got {task_type!r}")
    f.get("question", str)
    start_s = _stamp(f, "time_stamp")
    if part == "proactive":
        truth_s = _stamp(f, "ground_truth_time_stamp")
        f.get("ground_truth_output", str)
        if truth_s + POLL_UNTIL_S < start_s + POLL_AFTER_S:
            raise f.fail("ground_truth_time_stamp", f"({truth_s} s) lies too far before time_stamp ({start_s} s): "
                         "the official polling from time_stamp + 1 to ground truth + 4 would be empty")  # fmt: skip
        return
    options = f.get("options", list)
    if len(options) < 4 or not all(isinstance(o, str) for o in options):
        raise f.fail("options", f"must be a list of at least 4 strings (the prompt shows four), got {show(options)}")
    answer = f.get("answer", str)
    if answer not in ("A", "B", "C", "D"):
        raise f.fail("answer", f"must be one of the letters A, B, C, D, got {answer!r}")


def _stamp(f: Fields, key: str) -> int:
    """Seconds as the official code reads a time stamp (anomalies such as "00:12450" kept)."""
    text = f.get(key, str)
    try:
        return parse_time_stamp(text)
    except ValueError:
        raise f.fail(key, f"must be a time stamp like 00:03:10, got {text!r}") from None
