"""StreamBench (StreamChat, ICLR 2025): open-ended questions over long videos, asked as one dialogue per video
and scored by an LLM judge.

One stream per annotation entry. Its breakpoints are queries at `int(time)` in list order (as StreamChat casts
and feeds them); each follows the previous one, so the system's own earlier answers come back as dialogue
history, as StreamChat keeps them (`history: false` asks each question alone). Our protocol is online: frames
up to the question time; StreamChat's baselines in the repository see the whole video (offline).

Judge: the Video-ChatGPT-style yes/no + 0-5 prompt of `eval_video_qa_with_llama3_ours.py`. Its output is
read as that script reads it: the last `{...}` on a line, as a Python literal; "yes" when the lower-cased
`llama_pred` contains "yes", else "no" when it contains "no"; `score` through int(), 0 to 5. Anything else
is a failed judgment (listed, never guessed). `official_table` aggregates as `calculate_score.py` and
`calculate_avg_score.py`: Accuracy = #yes / (#yes + #no), Average score = mean score, per class.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from harness.benchmarks.base import DATASETS, BadItem, PromptsConfig, RawTextAnswers
from harness.benchmarks.fields import Fields, read_json, show
from harness.benchmarks.judge_prompts import JudgeTemplate, Piece, read_messages
from harness.benchmarks.official import OfficialTable
from harness.benchmarks.validate import check_video
from harness.errors import ConfigError, DataError
from harness.judge import JudgePrompt, Verdict
from harness.records import Query, ResultRecord, StreamSample, Truth

log = logging.getLogger(__name__)

# Class codes in table order: a third-party loader's six (Object Search, Long-term Memory Search, Short-term
# Memory Search, Conversational Interaction, Knowledge-based QA, Simple Factual), then an early StreamChat demo's.
# Neither is verified against the released file: codes found there are taken as they are, known ones first.
KNOWN_CLASSES = ("OS", "LM", "SM", "CI", "KG", "SF", "ST", "FT", "CS")
OFFICIAL_SCRIPT = "eval_video_qa_with_llama3_ours.py"
JUDGE_FIELDS = ("question", "answer", "prediction")  # the official script's variable names
KEY = "judgment"  # the one judge prompt per answer
LAYOUTS = ("<class_1>", "<class_1>/<class_1>")  # where a video is looked for, in this order (see _candidates)
INSTRUCTION = "Answer the question about the video so far in one or two sentences."

# Our own wording, in the structure of the official prompt (system: what a match is; user: the triple, then
# the output format the official parser reads).
OWN_JUDGE = JudgeTemplate(
    system=(
        "You judge answers to questions about videos. Compare a predicted answer with the correct answer and "
        "decide whether they agree in meaning.\n"
        "- Judge the meaning, not the wording: synonyms and paraphrases match.\n"
        "- The prediction must be correct with respect to the correct answer."
    ),
    user=(
        Piece(
            "Question about a video, with its correct answer and a predicted answer:\n\n"
            "Question: {question}\nCorrect Answer: {answer}\nPredicted Answer: {prediction}\n\n"
            "Does the prediction match the correct answer, and how well, from 0 (not at all) to 5 (fully)? "
            "Reply with a Python dictionary only, with the keys 'llama_pred' ('yes' or 'no') and 'score' (an "
            "integer from 0 to 5), and no other text, for example: {{'llama_pred': 'yes', 'score': 4}}."
        ),
    ),
)
_LAST_DICT = re.compile(r"\{.*?\}")  # the official pattern: the shortest {...} within one line


@dataclass(frozen=True)
class StreamBenchConfig:
    name: str = "streambench"
    root: str = "datasets/streambench"  # relative paths resolve against the current working directory
    annotation: str = "streaming_bench_v0.3.json"  # relative to root
    videos: str = ""  # relative to root: the folder holding Ego/, WebVideo/, Movie/ ("": root itself)
    tasks: list[str] = field(default_factory=list)  # class codes to run; empty: every class in the file
    history: bool = True  # each question follows the previous one: the system's own answers as history
    on_bad_item: BadItem = BadItem.fail  # a missing video or a question past its end: stop, or skip the item
    prompts: PromptsConfig = field(default_factory=PromptsConfig)  # official_dir: a StreamChat checkout


@DATASETS.register("streambench", StreamBenchConfig)
class StreamBench(RawTextAnswers):
    """Adapter of StreamBench v0.3: multi-turn open-ended QA per video, judged yes/no + 0-5."""

    judged = True

    def __init__(self, cfg: StreamBenchConfig) -> None:
        self.cfg = cfg
        self.tasks: tuple[str, ...] = tuple(cfg.tasks) or KNOWN_CLASSES[:6]  # the classes found, after load()
        official = cfg.prompts.official_dir
        self.judge_template = read_messages(Path(official) / OFFICIAL_SCRIPT, JUDGE_FIELDS) if official else OWN_JUDGE

    @property
    def annotation_path(self) -> Path:
        return Path(self.cfg.root) / self.cfg.annotation

    def load(self) -> list[StreamSample]:
        """One sample per entry, queries in list order; a missing video is left to the pre-sweep check."""
        entries = read_entries(self.annotation_path)
        found = _ordered({bp["class"] for entry in entries for bp in entry["breakpoint"]})
        unknown = [code for code in self.cfg.tasks if code not in found]
        if unknown:
            raise ConfigError(
                f"dataset=streambench: tasks {unknown} are not classes of {self.annotation_path}; "
                f"it has {', '.join(found)}"
            )
        self.tasks = tuple(c for c in found if c in self.cfg.tasks) if self.cfg.tasks else found
        samples, owners, missing = [], {}, []
        for index, entry in enumerate(entries):
            sample = self._sample(index, entry)
            if sample.id in owners:
                raise DataError(f"{self.annotation_path}: entries {owners[sample.id]} and {index} are both {sample.id}")
            owners[sample.id] = index
            if sample.extras["layout"] is None:
                missing.append(sample.extras["tried"])
            if sample.queries:
                samples.append(sample)
        if missing:
            log.warning(
                "streambench: %d videos found in neither layout, e.g. %s (tried <videos>/<class_1>/<video_path> "
                "and <videos>/<class_1>/<class_1>/<video_path>)",
                len(missing),
                " or ".join(missing[0]),
            )
        return samples

    def prompt(self, query: Query) -> str:
        """The open question and a one-line instruction (our wording; StreamChat asks the bare question)."""
        return f"{query.text}\n{INSTRUCTION}"

    def score(
        self, query: Query, truth: Truth, parsed: str | None, response_time_s: float | None
    ) -> tuple[float, dict[str, float]]:
        """0: only called for a query without an answer to judge (judged answers are scored by `judge_verdict`)."""
        return 0.0, {}

    def judge_prompts(self, query: Query, truth: Truth, response: str) -> list[JudgePrompt]:
        system, user = self.judge_template.render(question=query.text, answer=truth.answer, prediction=response)
        return [JudgePrompt(KEY, user, system)]

    def judge_verdict(self, query: Query, truth: Truth, outputs: Mapping[str, str | None]) -> Verdict:
        """1 if the judge said yes, 0 if no; `judge_score` the 0-5 score; unreadable: failed."""
        judgment = read_judgment(outputs.get(KEY))
        if judgment is None:
            return Verdict(0.0, {}, (KEY,))
        yes, score = judgment
        return Verdict(1.0 if yes else 0.0, {"judge_score": float(score)})

    def _sample(self, index: int, entry: dict[str, Any]) -> StreamSample:
        info = entry["info"]
        tried = tuple(str(p) for p in self._candidates(info["class_1"], info["video_path"]))
        layout = next((i for i, p in enumerate(tried) if Path(p).is_file()), None)
        video = tried[layout or 0]
        stem = info.get("video_name") or Path(info["video_path"]).stem
        sample_id = re.sub(r"[^A-Za-z0-9._-]", "_", f"{info['class_1']}_{stem}")
        queries, truths, previous = [], {}, None
        for i, bp in enumerate(entry["breakpoint"]):
            if self.cfg.tasks and bp["class"] not in self.cfg.tasks:
                continue
            query_id = f"{sample_id}_{i}"
            follows = previous if self.cfg.history else None
            queries.append(
                Query(query_id, float(int(bp["time"])), bp["question"], bp["class"], "open", follows=follows)
            )
            truths[query_id] = Truth(query_id, bp["answer"])
            previous = query_id
        times = [q.time_s for q in queries]
        duration = check_video(video).duration_s if layout is not None else None
        extras = {"entry": index, "info": info, "tried": tried, "layout": None if layout is None else LAYOUTS[layout]}
        return StreamSample(sample_id, video, duration or max(times, default=0.0), tuple(queries), truths, extras)

    def _candidates(self, class_1: str, video_path: str) -> tuple[Path, Path]:
        """The official layout, then the doubled class folder some third-party loaders expect."""
        base = Path(self.cfg.root) / self.cfg.videos
        return base / class_1 / video_path, base / class_1 / class_1 / video_path


def read_judgment(text: str | None) -> tuple[bool, int] | None:
    """(yes, score 0-5) from a judge output as the official script reads it; None when it cannot be read."""
    if text is None:
        return None
    found = _LAST_DICT.findall(text)
    if not found:
        return None
    try:
        value = ast.literal_eval(found[-1])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("llama_pred"), str):
        return None
    pred = value["llama_pred"].lower()
    yes = True if "yes" in pred else False if "no" in pred else None  # "yes" first, as calculate_score.py
    score = _score(value.get("score"))
    if yes is None or score is None:
        return None
    return yes, score


def official_table(records: Iterable[ResultRecord]) -> OfficialTable:
    """Accuracy % and mean score (0-5) per class and overall, over the answers with a readable judgment."""
    records = list(records)
    judged = [r for r in records if not r.has_error and not r.judge_failed and "judge_score" in r.subscores]
    classes = _ordered({r.task for r in judged})
    tasks, scores, counts = {}, {}, {}
    for code in classes:
        mine = [r for r in judged if r.task == code]
        tasks[code] = 100.0 * fmean(r.score or 0.0 for r in mine)
        scores[f"{code} score"] = fmean(r.subscores["judge_score"] for r in mine)
        counts[code] = len(mine)
    overall = 100.0 * fmean(r.score or 0.0 for r in judged) if judged else 0.0
    score = fmean(r.subscores["judge_score"] for r in judged) if judged else 0.0
    failed = sum(1 for r in records if not r.has_error and r.judge_failed)
    errors = sum(r.has_error for r in records)
    notes = (
        "accuracy = #yes / (#yes + #no) over readable judgments (calculate_score.py); rows '<class> score' and "
        "'score' are mean judge scores on 0-5, not %",
        f"{failed} answers with an unreadable judgment and {errors} unanswered queries (errors) are left out of "
        "every denominator, as #yes / (#yes + #no) implies",
        "per class, accuracy uses the substring rule of calculate_score.py; calculate_avg_score.py compares "
        "llama_pred == 'yes' exactly (they differ only when the judge writes e.g. 'Yes')",
    )
    return OfficialTable("streambench", tasks, {**scores, "score": score}, overall, counts, notes)


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Every entry of the annotation, each field checked; DataError names file, entry and field."""
    data = read_json(
        path,
        "annotation file not found. Expected streaming_bench_v0.3.json there and the videos under <class_1>/ "
        "folders beside it (or set dataset.root / dataset.annotation / dataset.videos); see "
        "datasets/streambench/README.md",
    )
    if not isinstance(data, list):
        raise DataError(f"{path}: must be a list of video entries (the official format), got {show(data)}")
    return [_read_entry(raw, f"{path}, entry {index}") for index, raw in enumerate(data)]


def _read_entry(raw: Any, where: str) -> dict[str, Any]:
    f = Fields(raw, where)
    info = Fields(f.get("info", dict), f"{where}, info")
    for key in ("video_path", "class_1"):
        if not info.get(key, str):
            raise info.fail(key, "must not be empty")
    info.get("video_name", str, optional=True)
    where = f"{where} ({info.item['video_path']})"
    breakpoints = Fields(raw, where).get("breakpoint", list)
    for i, bp in enumerate(breakpoints):
        point = Fields(bp, f"{where}, breakpoint[{i}]")
        for key in ("question", "answer", "class"):
            point.get(key, str)
        _time(point)
    return raw


def _time(f: Fields) -> int:
    """`time` as StreamChat reads it: int(time), seconds from the start."""
    value = f.item.get("time")
    if value is None:
        raise f.fail("time", "is missing")
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError
        seconds = int(value)
    except (TypeError, ValueError, OverflowError):
        raise f.fail("time", f"must be seconds that int() reads, got {show(value)}") from None
    if seconds < 0:
        raise f.fail("time", f"must be >= 0 seconds, got {show(value)}")
    return seconds


def _score(value: Any) -> int | None:
    """int(score) as calculate_score.py takes it (4.8 -> 4, "4" -> 4), within 0..5; anything else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (int, float)) and 0 <= value <= 5:
        return int(value)
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            return None
        return number if 0 <= number <= 5 else None
    return None


def _ordered(codes: Iterable[str]) -> tuple[str, ...]:
    """Known class codes in table order, then any other code sorted."""
    codes = set(codes)
    return tuple(c for c in KNOWN_CLASSES if c in codes) + tuple(sorted(codes - set(KNOWN_CLASSES)))
