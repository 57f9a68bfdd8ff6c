"""OVO-Bench (v2) adapter: the official annotation read as streams, asked and scored as the official code does.

One `StreamSample` per video; every MCQ item is one query at its `realtime`, every REC/SSR/CRR `test_info`
probe one query at the probe's `realtime` (id `<item id>_<probe index>`, the official chunk name). Each query
records its official visible span in `clip_end_s`: `ceil(realtime)` capped at the video's duration, the clip
`utils/chunk_videos.py` cuts. Responses are kept raw and scored with the official per-item rules of
`ovo_bench_scoring`; `to_official_results` turns a job's records back into the official results JSON, so the
official scorer can re-score them. Nothing is downloaded: the annotation and videos are the user's copies
(datasets/ovo_bench/README.md).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from harness.benchmarks import robust
from harness.benchmarks.base import DATASETS, BadItem, PromptsConfig, RawTextAnswers
from harness.benchmarks.fields import Fields, parse_official_source, read_json, show
from harness.benchmarks.ovo_bench_scoring import CATEGORIES, mcq_correct, rec_correct, yes_no_correct
from harness.errors import ConfigError, DataError
from harness.records import Query, ResultRecord, StreamSample, Truth

TASKS = tuple(code for codes in CATEGORIES.values() for code in codes)  # score.py's printed order
FORWARD_TASKS = CATEGORIES["Forward"]
RESULT_LIST = {code: key for key, name in (("backward", "Backward"), ("realtime", "Real-time"), ("forward", "Forward"))
               for code in CATEGORIES[name]}  # fmt: skip
TEMPLATE_NAMES = ("BR_PROMPT_TEMPLATE", "REC_PROMPT_TEMPLATE", "SSR_PROMPT_TEMPLATE", "CRR_PROMPT_TEMPLATE")
# the full v2 annotation: items per MCQ task, probes (queries) per REC/SSR/CRR task (benchmarks.md 1.2)
PUBLISHED_COUNTS = {
    "EPM": 297, "ASI": 148, "HLD": 186, "OCR": 149, "ACR": 109, "ATR": 116, "STU": 178, "FPD": 101, "OJR": 184,
    "REC": 698, "SSR": 629, "CRR": 240,
}  # fmt: skip

# Our own wording, in the structure of the official constant.py (benchmarks.md 1.3 point 4). Placeholders are
# filled like the official code: positionally (`{}`), or by name where a template names them.
OWN_TEMPLATES = {
    "BR_PROMPT_TEMPLATE": (
        "\nQuestion: {}\nOptions:\n{}\n\n"
        "Reply with only the letter of the option you choose (for example A, B or C), and nothing else.\n"
    ),
    "REC_PROMPT_TEMPLATE": (
        "\nIn this video people may repeat one kind of action; whoever performs it is called 'they' below.\n"
        "Count how many times the action has been performed so far, by everyone together; "
        "one complete motion counts once.\n"
        "Question: {}\n"
        "Reply with a single number (0, 1, 2, 3, ...) and nothing else.\n"
    ),
    "SSR_PROMPT_TEMPLATE": (
        "\nThis is a tutorial video that goes through a sequence of steps. One of the steps is:\n{}\n"
        "Is the person in the video performing this step right now?\n"
        'Reply with only "Yes" or "No", and nothing else.\n'
    ),
    "CRR_PROMPT_TEMPLATE": (
        "\nThe following question is about the latest frames, the end of the video so far.\n{}\n"
        "Do the frames so far, the latest ones above all, show enough to answer this question?\n"
        'Reply with only "Yes" or "No", and nothing else.\n'
    ),
}


@dataclass(frozen=True)
class OVOBenchConfig:
    name: str = "ovo_bench"
    root: str = "datasets/ovo_bench"  # relative paths resolve against the current working directory
    annotation: str = "ovo_bench_new.json"  # relative to root
    videos: str = "src_videos"  # relative to root; an item's `video` is a path under it
    tasks: list[str] = field(default_factory=list)  # empty: all 12
    on_bad_item: BadItem = BadItem.fail  # a missing video or a query past its end: stop, or skip the item
    prompts: PromptsConfig = field(default_factory=PromptsConfig)  # official_dir: a checkout (its constant.py)


@DATASETS.register("ovo_bench", OVOBenchConfig)
class OVOBench(RawTextAnswers):
    """Adapter of OVO-Bench v2: official annotation, prompts, visible span and per-item scoring."""

    tasks = TASKS

    def __init__(self, cfg: OVOBenchConfig) -> None:
        unknown = [t for t in cfg.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"dataset=ovo_bench: tasks {unknown} unknown; choose from {', '.join(TASKS)}")
        self.cfg = cfg
        self.tasks = tuple(t for t in TASKS if t in cfg.tasks) if cfg.tasks else TASKS  # the selection, in order
        official = cfg.prompts.official_dir
        self.templates = read_templates(Path(official) / "constant.py") if official else dict(OWN_TEMPLATES)

    @property
    def annotation_path(self) -> Path:
        return Path(self.cfg.root) / self.cfg.annotation

    def load(self) -> list[StreamSample]:
        """One sample per video, queries in time order; a missing video is left to the reader (error records)."""
        items = read_items(self.annotation_path)
        selected = set(self.cfg.tasks or TASKS)
        by_video: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            if item["task"] in selected:
                by_video.setdefault(item["video"], []).append(item)
        samples, owners = [], {}
        for video, group in by_video.items():
            sample_id = re.sub(r"[^A-Za-z0-9._-]", "_", video)
            if sample_id in owners:
                raise DataError(f"{self.annotation_path}: videos {owners[sample_id]!r} and {video!r} share the id")
            owners[sample_id] = video
            samples.append(self._sample(sample_id, video, group))
        return samples

    def prompt(self, query: Query) -> str:
        """The official template of the query's task, filled the way the official code fills it."""
        if query.kind == "mcq":
            options = "; ".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(query.options)) + ";"
            return _fill(self.templates["BR_PROMPT_TEMPLATE"], query.text, options=options)
        template = self.templates[f"{query.task}_PROMPT_TEMPLATE"]
        return _fill(template, query.text, key="step" if query.task == "SSR" else "question")

    def score(
        self, query: Query, truth: Truth, parsed: str | None, response_time_s: float | None
    ) -> tuple[float, dict[str, float]]:
        """The official per-item rule of the query's task (see ovo_bench_scoring); `robust`: a stricter reading."""
        if query.kind == "mcq":
            correct = mcq_correct(parsed, truth.answer)
            strict = robust.letter(parsed, query.options) == truth.answer
        elif query.kind == "count":
            correct = rec_correct(parsed, int(truth.answer))
            strict = robust.count(parsed) == int(truth.answer)
        else:
            correct = yes_no_correct(parsed, 1 if truth.answer == "Yes" else 0)
            strict = robust.yes_no(parsed) == truth.answer
        return float(correct), {"robust": float(strict)}

    def _sample(self, sample_id: str, video: str, items: list[dict[str, Any]]) -> StreamSample:
        path = Path(self.cfg.root) / self.cfg.videos / video
        times = [float(t) for item in items for t in _probe_times(item)]
        duration = _video_duration(path) or max(times)
        queries, truths, origin = [], {}, {}
        for item in items:
            for query, truth, probe in _queries(item, duration):
                queries.append(query)
                truths[query.id] = truth
                origin[query.id] = {"item_id": item["id"], "task": item["task"], "video": video, "probe": probe}
        queries.sort(key=lambda q: q.time_s)
        extras = {"queries": origin, "items": {item["id"]: item for item in items}}
        return StreamSample(sample_id, str(path), duration, tuple(queries), truths, extras)


def to_official_results(samples: Iterable[StreamSample], records: Iterable[ResultRecord]) -> dict[str, list]:
    """The official results JSON (`backward`, `realtime`, `forward`) of a job's records.

    MCQ records are `id, video, task, question, response, ground_truth` (the letter); forward records are the
    annotation item with `response` on every probe. A query with no record or an error record gets
    `response: null`, as the official inference writes on a failed call. Items come in annotation id order.
    """
    responses = {r.query_id: (None if r.has_error else r.response) for r in records}
    results: dict[str, list] = {"backward": [], "realtime": [], "forward": []}
    items = sorted((item for s in samples for item in s.extras["items"].values()), key=lambda item: item["id"])
    for item in items:
        if item["task"] in FORWARD_TASKS:
            probes = [{**p, "response": responses.get(f"{item['id']}_{i}")} for i, p in enumerate(item["test_info"])]
            results["forward"].append({**item, "test_info": probes})
        else:
            results[RESULT_LIST[item["task"]]].append(
                {
                    "id": item["id"],
                    "video": item["video"],
                    "task": item["task"],
                    "question": item["question"],
                    "response": responses.get(str(item["id"])),
                    "ground_truth": chr(65 + item["gt"]),
                }  # fmt: skip
            )
    return results


def read_templates(path: Path) -> dict[str, str]:
    """The four prompt constants of an official constant.py, read with `ast` (the file is never run)."""
    tree = parse_official_source(path, "JoeLeelyf/OVO-Bench (its constant.py)")
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in TEMPLATE_NAMES:
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    value = None
                if not isinstance(value, str):
                    raise ConfigError(f"dataset.prompts.official_dir: {path}: {name} must be a string literal")
                found[name] = value  # a later assignment wins, as it would when the module runs
    missing = [name for name in TEMPLATE_NAMES if name not in found]
    if missing:
        raise ConfigError(f"dataset.prompts.official_dir: {path}: no string constant {', '.join(missing)}")
    return found


def read_items(path: Path) -> list[dict[str, Any]]:
    """Every item of the annotation, each field checked; DataError names file, index, id and field."""
    data = read_json(
        path,
        "annotation file not found. Expected the official data/ovo_bench_new.json there and the videos under "
        "src_videos/ beside it (or set dataset.root / dataset.annotation / dataset.videos); see "
        "datasets/ovo_bench/README.md",
    )
    if not isinstance(data, list):
        raise DataError(f"{path}: must be a list of items (the official format), got {show(data)}")
    items, seen = [], set()
    for index, raw in enumerate(data):
        item = _read_item(raw, f"{path}, item {index}")
        if item["id"] in seen:
            raise DataError(f"{path}, item {index} (id {item['id']}): field 'id' repeats {item['id']}")
        seen.add(item["id"])
        items.append(item)
    return items


def _read_item(raw: Any, where: str) -> dict[str, Any]:
    item_id = _integer(Fields(raw, where), "id")
    f = Fields(raw, f"{where} (id {item_id})")
    task = f.get("task", str)
    if task not in TASKS:
        raise f.fail("task", f"must be one of {', '.join(TASKS)}, got {task!r}")
    f.get("video", str)
    if task == "REC":
        f.get("activity", str)
        _probes(f, {"realtime": float, "count": int})
    elif task == "SSR":
        _probes(f, {"realtime": float, "step": str, "type": int})
    elif task == "CRR":
        f.get("question", str)
        _probes(f, {"realtime": float, "type": int})
    else:
        _time(f, "realtime")
        f.get("question", str)
        options = f.get("options", list)
        if not 2 <= len(options) <= 26 or not all(isinstance(o, str) for o in options):
            raise f.fail("options", f"must be a list of 2 to 26 strings, got {show(options)}")
        gt = _integer(f, "gt")
        if not 0 <= gt < len(options):
            raise f.fail("gt", f"must index one of the {len(options)} options (0-based), got {gt}")
    return raw


def _probes(f: Fields, kinds: Mapping[str, type]) -> None:
    probes = f.get("test_info", list)
    if not probes:
        raise f.fail("test_info", "must hold at least one probe")
    for i, raw in enumerate(probes):
        probe = Fields(raw, f"{f.where}, test_info[{i}]")
        for key, kind in kinds.items():
            if key == "realtime":
                _time(probe, key)
            elif kind is int:
                value = _integer(probe, key)
                if key == "type" and value not in (0, 1):
                    raise probe.fail(key, f"must be 0 or 1, got {value}")
                if key == "count" and value < 0:
                    raise probe.fail(key, f"must be >= 0, got {value}")
            else:
                probe.get(key, kind)


def _queries(item: dict[str, Any], duration: float) -> list[tuple[Query, Truth, int | None]]:
    """(query, truth, probe index) of one item: one for an MCQ item, one per probe for a forward item."""
    task, item_id = item["task"], item["id"]
    if task not in FORWARD_TASKS:
        time_s = float(item["realtime"])
        query = Query(str(item_id), time_s, item["question"], task, "mcq", tuple(item["options"]),
                      clip_end_s=_clip_end(time_s, duration))  # fmt: skip
        return [(query, Truth(query.id, chr(65 + item["gt"])), None)]
    out = []
    for i, probe in enumerate(item["test_info"]):
        time_s, query_id = float(probe["realtime"]), f"{item_id}_{i}"
        if task == "REC":
            text, kind, answer = f"How many times did they {item['activity']}?", "count", str(probe["count"])
        else:
            text = probe["step"] if task == "SSR" else item["question"]
            kind, answer = "yes_no", "Yes" if probe["type"] == 1 else "No"
        query = Query(query_id, time_s, text, task, kind, clip_end_s=_clip_end(time_s, duration))
        out.append((query, Truth(query_id, answer), i))
    return out


def _clip_end(time_s: float, duration: float) -> float:
    """The official clip end: ceil(t), capped at the video's duration."""
    return min(float(math.ceil(time_s)), duration)


def _probe_times(item: dict[str, Any]) -> list[float]:
    return [p["realtime"] for p in item["test_info"]] if item["task"] in FORWARD_TASKS else [item["realtime"]]


def _video_duration(path: Path) -> float | None:
    """Seconds of video by the container (else the stream); None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with av.open(str(path)) as container:
            if container.duration:
                return container.duration / av.time_base
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except (av.FFmpegError, IndexError, OSError):
        return None
    return None


def _fill(template: str, text: str, options: str | None = None, key: str = "question") -> str:
    """Positional `{}` as the official code fills them; `{question}`/`{options}`/`{step}` for named templates."""
    named = {"question": text, "options": options} if options is not None else {key: text}
    positional = (text, options) if options is not None else (text,)
    try:
        return template.format(*positional, **named)
    except (IndexError, KeyError) as e:
        raise ConfigError(f"dataset.prompts.official_dir: a template has a placeholder we cannot fill: {e}") from None


def _integer(f: Fields, key: str) -> int:
    value = f.get(key, int)
    if isinstance(value, bool):
        raise f.fail(key, f"must be int, got {show(value)}")
    return value


def _time(f: Fields, key: str) -> float:
    value = f.get(key, float)
    if value < 0:
        raise f.fail(key, f"must be >= 0 seconds, got {value}")
    return value
