"""CogStream (arXiv 2506.10516): segment-wise dialogues over a video, each answer judged on five dimensions.

One stream per test video, from one dialogue sequence of `QA_Dataset/<video>.json` (sequence 0, as the
official `evaluate/answer_generate.py` runs). As there, QAs are grouped by `Event_Time`; the k-th distinct
time goes with the k-th event segment in natural order, and a segment's questions are asked one after
another at its end. The segments are one stream, concatenated once into a cache (`cogstream_stream`), so a
question at the end of segment k sees segments 1..k and nothing later. Every question follows the previous
one: the system's own earlier answers stay in the dialogue, as in the official conversation (`history:
false` asks each alone). The question is asked bare, as the official turn is. Labels come from
`VQA_Dataset/<video>.json` (as step1b reads them). Scoring and our interpretation: `cogstream_scoring`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.benchmarks import cogstream_scoring as scoring
from harness.benchmarks.base import DATASETS, BadItem, PromptsConfig, RawTextAnswers
from harness.benchmarks.cogstream_stream import BrokenSegment, BuiltStream, built_stream
from harness.benchmarks.fields import Fields, read_json, show
from harness.errors import ConfigError, DataError
from harness.judge import JudgePrompt, Verdict
from harness.records import Query, StreamSample, Truth

log = logging.getLogger(__name__)

TASKS = scoring.TASKS
_SEGMENT = re.compile(r"segment_(\d+)")  # the official natural sort key of a segment file
_MISALIGNED_S = 1.0  # a segment end this far from its Event_Time is reported (the official pairing is kept)


@dataclass(frozen=True)
class CogStreamConfig:
    name: str = "cogstream"
    root: str = "datasets/cogstream"  # relative paths resolve against the current working directory
    qa: str = "Test_dataset/QA_Dataset"  # relative to root: <video>.json, the dialogue sequences
    labels: str = "Test_dataset/VQA_Dataset"  # relative to root: <video>.json, the label of every QA
    segments: str = "Test_dataset/event_segments"  # relative to root: <video>/<video>_segment_<n>.mp4
    sequence: int = 0  # which dialogue sequence of each video (the official inference runs sequence 0)
    tasks: list[str] = field(default_factory=list)  # capability codes to ask; empty: all
    history: bool = True  # each question follows the previous one: the system's own answers as history
    streams: str = "streams"  # relative to root: where the concatenated segments are built (once)
    stream_fps: float = 4.0  # frames per second of the built stream (a system's fps above it gets no more)
    stream_max_side: int = 0  # longer side of the built stream's frames; 0: the first segment's size
    on_bad_item: BadItem = BadItem.fail  # a missing or broken segment: stop, or skip the video
    prompts: PromptsConfig = field(default_factory=PromptsConfig)  # official_dir: a CogStream checkout


@dataclass(frozen=True)
class _QA:
    index: int  # position in the sequence (the official qa_id and `relevance` index)
    question: str
    answer: str
    event_time_s: float
    relevance: tuple[int, ...]  # 1 where an earlier QA of the sequence is context for this one
    task: str


@dataclass(frozen=True)
class _Plan:
    """A video read from the annotation, before its stream is built."""

    video: str
    qas: tuple[_QA, ...]
    times: tuple[float, ...]  # distinct Event_Times, sorted: time k goes with segment k
    segments: tuple[Path, ...]  # the first len(times) segment files, or fewer when some are missing
    missing: Path | None  # the first missing segment (or the missing folder)


@DATASETS.register("cogstream", CogStreamConfig)
class CogStream(RawTextAnswers):
    """Adapter of the CogStream test set: one dialogue per video over its concatenated event segments."""

    judged = True
    tasks = TASKS

    def __init__(self, cfg: CogStreamConfig) -> None:
        unknown = [t for t in cfg.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"dataset=cogstream: tasks {unknown} unknown; choose from {', '.join(TASKS)}")
        if cfg.sequence < 0 or cfg.stream_fps <= 0 or cfg.stream_max_side < 0:
            raise ConfigError(
                f"dataset=cogstream: sequence ({cfg.sequence}) and stream_max_side ({cfg.stream_max_side}) must "
                f"be >= 0 and stream_fps ({cfg.stream_fps}) > 0"
            )
        self.cfg = cfg
        self.tasks = tuple(t for t in TASKS if t in cfg.tasks) if cfg.tasks else TASKS
        official = cfg.prompts.official_dir
        self.judge_templates = scoring.official_templates(official) if official else scoring.own_templates()
        self._judging: dict[str, tuple[int, tuple[tuple[str, str], ...]]] = {}  # query id -> (index, related QAs)

    @property
    def root(self) -> Path:
        return Path(self.cfg.root)

    def load(self) -> list[StreamSample]:
        """One sample per video; streams are built on first use. Missing segments are left to the pre-sweep check."""
        qa_dir = self.root / self.cfg.qa
        if not qa_dir.is_dir():
            raise DataError(
                f"{qa_dir}: no such folder. Expected the CogStream test set there: {self.cfg.qa}/<video>.json, "
                f"{self.cfg.labels}/<video>.json and {self.cfg.segments}/<video>/ (or set dataset.root / "
                "dataset.qa / dataset.labels / dataset.segments); see datasets/cogstream/README.md"
            )
        plans = [self._plan(path) for path in sorted(qa_dir.glob("*.json"))]
        if not plans:
            raise DataError(f"{qa_dir}: no <video>.json files; see datasets/cogstream/README.md")
        workers = max(1, min(len(plans), os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:  # decoding and encoding release the GIL
            streams = list(pool.map(self._stream, plans))
        samples = [self._sample(plan, stream) for plan, stream in zip(plans, streams, strict=True)]
        misaligned = [s.id for s in samples if s.extras["misaligned"]]
        if misaligned:
            log.warning(
                "cogstream: %d videos have a segment ending more than %.0f s from its Event_Time (e.g. %s); the "
                "official pairing (k-th segment <-> k-th distinct Event_Time) is kept",
                len(misaligned), _MISALIGNED_S, misaligned[0],
            )  # fmt: skip
        return [s for s in samples if s.queries]

    def prompt(self, query: Query) -> str:
        """The bare question, as the official user turn is."""
        return query.text

    def score(
        self, query: Query, truth: Truth, parsed: str | None, response_time_s: float | None
    ) -> tuple[float, dict[str, float]]:
        """0: only called for a query without an answer to judge (judged answers are scored by `judge_verdict`)."""
        return 0.0, {}

    def judge_prompts(self, query: Query, truth: Truth, response: str) -> list[JudgePrompt]:
        """IA, DC, CA, TP, LC prompts; DC to LC with the ground-truth earlier QAs this one relies on."""
        index, related = self._judged(query)
        return scoring.judge_prompts(self.judge_templates, index, query.text, truth.answer, response, related)

    def judge_verdict(self, query: Query, truth: Truth, outputs: Mapping[str, str | None]) -> Verdict:
        return scoring.verdict(outputs, self._judged(query)[0])

    def _judged(self, query: Query) -> tuple[int, tuple[tuple[str, str], ...]]:
        try:
            return self._judging[query.id]
        except KeyError:
            raise DataError(
                f"dataset=cogstream: query {query.id} was not loaded by this adapter (call load())"
            ) from None

    def _plan(self, qa_path: Path) -> _Plan:
        video = qa_path.stem
        labels_path = self.root / self.cfg.labels / qa_path.name
        raw = _read_sequence(qa_path, self.cfg.sequence)
        labels = _read_labels(labels_path, self.cfg.sequence, len(raw))
        qas = tuple(_read_qa(item, f"{qa_path}, sequence {self.cfg.sequence}, QA {i}", i, labels[i])
                    for i, item in enumerate(raw))  # fmt: skip
        times = tuple(sorted({qa.event_time_s for qa in qas}))
        folder = self.root / self.cfg.segments / video
        files = sorted((p for p in folder.glob("*") if _SEGMENT.search(p.name)), key=_segment_number)
        if len(files) >= len(times):
            return _Plan(video, qas, times, tuple(files[: len(times)]), None)
        if not files:
            return _Plan(video, qas, times, (), folder if not folder.is_dir() else folder / f"{video}_segment_1.mp4")
        after = _segment_number(files[-1]) + 1
        return _Plan(video, qas, times, tuple(files), folder / f"{video}_segment_{after}.mp4")

    def _stream(self, plan: _Plan) -> BuiltStream | Path:
        """The built stream, or the segment (or folder) that keeps it from being built."""
        if plan.missing is not None:
            return plan.missing
        try:
            return built_stream(
                plan.segments, self.root / self.cfg.streams, _safe(plan.video), self.cfg.stream_fps,
                self.cfg.stream_max_side,
            )  # fmt: skip
        except BrokenSegment as e:
            return e.path

    def _sample(self, plan: _Plan, stream: BuiltStream | Path) -> StreamSample:
        sample_id = _safe(plan.video)
        built = isinstance(stream, BuiltStream)
        ask_at = [s.last_s for s in stream.segments] if built else list(plan.times)
        segment = {t: k for k, t in enumerate(plan.times)}
        order = sorted(plan.qas, key=lambda qa: (segment[qa.event_time_s], qa.index))
        queries, truths, origin, previous = [], {}, {}, None
        for qa in order:
            self._judging[f"{sample_id}_{qa.index}"] = (qa.index, _related(plan.qas, qa))
            if self.cfg.tasks and qa.task not in self.cfg.tasks:
                continue
            query_id, k = f"{sample_id}_{qa.index}", segment[qa.event_time_s]
            follows = previous if self.cfg.history else None
            queries.append(Query(query_id, ask_at[k], qa.question, qa.task, "open", follows=follows))
            truths[query_id] = Truth(query_id, qa.answer)
            origin[query_id] = {"index": qa.index, "event_time_s": qa.event_time_s, "segment": k}
            previous = query_id
        misaligned = built and any(
            abs(s.end_s - t) > _MISALIGNED_S for s, t in zip(stream.segments, plan.times, strict=True)
        )
        extras = {
            "video": plan.video,
            "sequence": self.cfg.sequence,
            "segments": [s.file for s in stream.segments] if built else [p.name for p in plan.segments],
            "spans": [(s.start_s, s.end_s) for s in stream.segments] if built else None,
            "queries": origin,
            "misaligned": misaligned,
        }
        path, duration = (stream.path, stream.duration_s) if built else (stream, max(plan.times, default=0.0))
        return StreamSample(sample_id, str(path), duration, tuple(queries), truths, extras)


def _read_sequence(path: Path, sequence: int) -> list[Any]:
    data = _read_json(path, "the dialogue sequences of one video (QA_Dataset)")
    if not isinstance(data, list) or not data:
        raise DataError(
            f"{path}: must be a non-empty list of dialogue sequences (the official format), got {show(data)}"
        )
    if sequence >= len(data):
        raise DataError(f"{path}: dataset.sequence={sequence}, but the file has {len(data)} sequences")
    chain = data[sequence]
    if not isinstance(chain, list) or not chain:
        raise DataError(f"{path}, sequence {sequence}: must be a non-empty list of QAs, got {show(chain)}")
    return chain


def _read_labels(path: Path, sequence: int, count: int) -> list[str]:
    """The label of every QA of the sequence; `ID` must be the QA's index, as step1b checks."""
    data = _read_json(path, "the labelled sequences of one video (VQA_Dataset)")
    if not isinstance(data, list) or sequence >= len(data):
        raise DataError(f"{path}: must be a list of sequences with a sequence {sequence} (dataset.sequence)")
    items = Fields(data[sequence], f"{path}, sequence {sequence}").get("Data", list)
    if len(items) != count:
        raise DataError(f"{path}, sequence {sequence}: {len(items)} QAs in Data, but the QA_Dataset file has {count}")
    labels = []
    for i, raw in enumerate(items):
        f = Fields(raw, f"{path}, sequence {sequence}, Data[{i}]")
        if f.item.get("ID") != i or isinstance(f.item.get("ID"), bool):
            raise f.fail("ID", f"must be the QA's index {i} (as step1b checks), got {show(f.item.get('ID'))}")
        label = f.get("label", str)
        if label not in scoring.CAPABILITIES:
            raise f.fail("label", f"is not a CogStream label: {label!r} (known: {', '.join(scoring.CAPABILITIES)})")
        labels.append(scoring.CAPABILITIES[label])
    return labels


def _read_qa(raw: Any, where: str, index: int, task: str) -> _QA:
    f = Fields(raw, where)
    info = Fields(f.get("info", dict), f"{where}, info")
    event_time = info.get("Event_Time", float)
    if event_time < 0:
        raise info.fail("Event_Time", f"must be >= 0 seconds, got {event_time}")
    written = info.item.get("relevance")
    if written is None:
        raise info.fail("relevance", "is missing")
    try:
        relevance = json.loads(written) if isinstance(written, str) else written  # the file writes str(list)
    except json.JSONDecodeError:
        relevance = None
    if not isinstance(relevance, list) or len(relevance) > index or any(v not in (0, 1) for v in relevance):
        raise info.fail("relevance", f"must be a list of 0/1 over the {index} earlier QAs, got {show(written)}")
    return _QA(index, f.get("Q", str), f.get("A", str), event_time, tuple(int(v) for v in relevance), task)


def _related(qas: tuple[_QA, ...], qa: _QA) -> tuple[tuple[str, str], ...]:
    """The ground-truth (question, answer) of the earlier QAs marked relevant."""
    return tuple((qas[i].question, qas[i].answer) for i, flag in enumerate(qa.relevance) if flag)


def _read_json(path: Path, what: str) -> Any:
    return read_json(path, f"not found ({what}); see datasets/cogstream/README.md")


def _segment_number(path: Path) -> int:
    match = _SEGMENT.search(path.name)
    return int(match.group(1)) if match else 999999


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
