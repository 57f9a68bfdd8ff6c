"""The embedded synthetic benchmark: generated on first use, so the harness runs end to end offline.

Coloured shapes come and go over a textured background; the five task families ask about what is
on screen now, a detail seen once long ago, counts and order so far, a two-turn exchange, and an
event to wait for. Everything is a function of the knobs, so the data folder is named by a hash
of them and is generated once, atomically, then only read. The question grammar lives in
`synthetic_questions`, the pixels in `synthetic_video`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.benchmarks.base import DATASETS
from harness.benchmarks.fields import Fields, show
from harness.benchmarks.synthetic_questions import make_queries
from harness.benchmarks.synthetic_video import COLOURS, SHAPES, Track, lane_centres, plan_tracks, render_video
from harness.errors import ConfigError, DataError
from harness.records import Query, StreamSample, Truth

GENERATOR_VERSION = 2  # bump when the generator changes what it writes: the data folder changes too
TASKS = ("realtime", "clue", "reasoning", "sequential", "proactive")
KINDS = ("mcq", "yes_no", "proactive")
MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
YES_NO_INSTRUCTION = "Answer yes or no."


@dataclass(frozen=True)
class SyntheticConfig:
    name: str = "synthetic"
    root: str = "datasets/synthetic"  # relative paths resolve against the current working directory
    seed: int = 0
    videos: int = 6
    duration_s: float = 60.0
    fps: float = 8.0
    width: int = 320
    height: int = 240
    objects: int = 9  # coloured objects per video
    object_size: int = 36
    distractors: int = 2


@DATASETS.register("synthetic", SyntheticConfig)
class Synthetic:
    """Adapter of the synthetic benchmark: generates the data on first use, then reads it."""

    tasks = TASKS

    def __init__(self, cfg: SyntheticConfig) -> None:
        _check_knobs(cfg)
        self.cfg = cfg

    @property
    def spec(self) -> dict[str, Any]:
        """Every knob that changes the data, and the generator version."""
        knobs = {k: v for k, v in asdict(self.cfg).items() if k not in ("name", "root")}
        for key in ("duration_s", "fps"):
            knobs[key] = float(knobs[key])
        return {"generator": GENERATOR_VERSION, **knobs}

    @property
    def data_dir(self) -> Path:
        digest = hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()
        return Path(self.cfg.root) / digest[:10]

    def load(self) -> list[StreamSample]:
        """Read the samples, generating the data folder first if it is not there yet."""
        if not (self.data_dir / "all.json").exists():
            self._generate()
        return read_annotation(self.data_dir / "all.json")

    def prompt(self, query: Query) -> str:
        """The question, then for mcq one "A. option" line each and the letter instruction."""
        if query.kind == "mcq":
            options = [f"{_letter(i)}. {text}" for i, text in enumerate(query.options)]
            return "\n".join([query.text, *options, MCQ_INSTRUCTION])
        if query.kind == "yes_no":
            return f"{query.text}\n{YES_NO_INSTRUCTION}"
        return query.text

    def fired(self, text: str) -> bool:
        """True when the reply's first yes/no word is "yes"."""
        return _first_word(text, ("yes", "no")) == "yes"

    def parse(self, query: Query, text: str) -> str | None:
        """mcq: an option letter; yes_no: "yes"/"no"; proactive: the first shape word."""
        if query.kind == "mcq":
            return _parse_letter(text, query.options)
        if query.kind == "yes_no":
            return _first_word(text, ("yes", "no"))
        return _first_word(text, SHAPES, plural=True)

    def score(
        self, query: Query, truth: Truth, parsed: str | None, response_time_s: float | None
    ) -> tuple[float, dict[str, float]]:
        """Exact match; a proactive reply must also come inside the truth's window (inclusive)."""
        content = 1.0 if parsed is not None and parsed == truth.answer else 0.0
        if query.kind != "proactive":
            return content, {}
        low, high = truth.window_s or (math.inf, -math.inf)
        in_time = 1.0 if response_time_s is not None and low <= response_time_s <= high else 0.0
        return in_time * content, {"time": in_time, "content": content}

    def _generate(self) -> None:
        """Write the data folder beside its final place, then move it there in one rename."""
        target = self.data_dir
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the data is meant to be shared
        try:
            write_dataset(self.cfg, self.spec, staging)
            try:
                os.replace(staging, target)
            except OSError:
                if not (target / "all.json").exists():  # not a concurrent generator: a real failure
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def write_dataset(cfg: SyntheticConfig, spec: dict[str, Any], out: Path) -> None:
    """Generate all videos and annotation files of `cfg` into the folder `out`."""
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "task_sets").mkdir(exist_ok=True)
    workers = max(1, min(cfg.videos, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # the encoder releases the GIL; each video has its own rng
        samples = list(pool.map(lambda index: _write_sample(cfg, index, out), range(cfg.videos)))
    annotation = {"benchmark": "synthetic", "version": GENERATOR_VERSION, "spec": spec, "samples": samples}
    (out / "all.json").write_text(json.dumps(annotation, indent=1))
    for task in TASKS:
        grouped = {s["id"]: [q for q in s["queries"] if q["task"] == task] for s in samples}
        (out / "task_sets" / f"{task}.json").write_text(json.dumps({"task": task, "samples": grouped}, indent=1))


def read_annotation(path: Path) -> list[StreamSample]:
    """Parse an all.json into samples; anything malformed raises DataError naming file, item and field."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the annotation: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    top = Fields(data, f"{path}")
    samples = top.get("samples", list)
    return [_read_sample(item, f"{path}, sample {i}", Path(path).parent) for i, item in enumerate(samples)]


def _read_sample(item: Any, where: str, folder: Path) -> StreamSample:
    sample_id = Fields(item, where).get("id", str)
    fields = Fields(item, f"{where} (id {sample_id!r})")
    duration = fields.get("duration_s", float)
    video = fields.get("video", str)
    queries: list[Query] = []
    truths: dict[str, Truth] = {}
    for i, raw in enumerate(fields.get("queries", list)):
        query, truth = _read_query(raw, f"{fields.where}, query {i}", duration, queries)
        if query.id in truths:
            raise Fields(raw, f"{fields.where}, query {i}").fail("id", f"repeats {query.id!r}")
        queries.append(query)
        truths[query.id] = truth
    extras = {k: item[k] for k in ("objects", "distractors", "fps", "width", "height") if k in item}
    return StreamSample(sample_id, str(folder / video), duration, tuple(queries), truths, extras)


def _read_query(raw: Any, where: str, duration: float, earlier: list[Query]) -> tuple[Query, Truth]:
    query_id = Fields(raw, where).get("id", str)
    f = Fields(raw, f"{where} (id {query_id!r})")
    time_s, task, kind = f.get("time_s", float), f.get("task", str), f.get("kind", str)
    if not 0.0 <= time_s < duration:
        raise f.fail("time_s", f"must lie in [0, {duration}) (the video), got {time_s}")
    if task not in TASKS:
        raise f.fail("task", f"must be one of {', '.join(TASKS)}, got {task!r}")
    if kind not in KINDS:
        raise f.fail("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    options = tuple(f.get("options", list))
    if not all(isinstance(o, str) for o in options):
        raise f.fail("options", "must be a list of strings")
    answer = f.get("answer", str)
    if kind == "mcq" and (not 2 <= len(options) <= 4 or answer not in [_letter(i) for i in range(len(options))]):
        raise f.fail("answer", f"must be the letter of one of {len(options)} options (2 to 4), got {answer!r}")
    if kind == "yes_no" and answer not in ("yes", "no"):
        raise f.fail("answer", f"must be 'yes' or 'no', got {answer!r}")
    follows = f.get("follows", str, optional=True)
    if follows is not None and follows not in [q.id for q in earlier]:
        raise f.fail("follows", f"must name an earlier query of the sample, got {follows!r}")
    trigger = f.get("trigger", str, optional=True)
    window = _pair(f, "window_s", optional=kind != "proactive")
    if kind == "proactive" and trigger is None:
        raise f.fail("trigger", "is required for a proactive query")
    evidence = f.get("evidence_s", list, optional=True) or []
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in evidence):
        raise f.fail("evidence_s", f"must be a list of numbers, got {show(evidence)}")
    query = Query(query_id, time_s, f.get("text", str), task, kind, options, follows, trigger)
    return query, Truth(query_id, answer, tuple(float(x) for x in evidence), window)


def _pair(f: Fields, key: str, optional: bool) -> tuple[float, float] | None:
    value = f.get(key, list, optional=optional)
    if value is None:
        return None
    if len(value) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise f.fail(key, f"must be [start, end] in seconds, got {show(value)}")
    if value[0] > value[1]:
        raise f.fail(key, f"must have start <= end, got {show(value)}")
    return float(value[0]), float(value[1])


def _write_sample(cfg: SyntheticConfig, index: int, out: Path) -> dict[str, Any]:
    """Plan, render and question one video; returns its all.json item."""
    sample_id = f"syn-{index:03d}"
    rng = np.random.default_rng([cfg.seed, index])
    scene = {k: getattr(cfg, k) for k in ("duration_s", "fps", "width", "height", "object_size")}
    tracks = plan_tracks(rng, objects=cfg.objects, distractors=cfg.distractors, **scene)
    video = f"videos/{sample_id}.mp4"
    render_video(out / video, tracks, rng, **scene)
    queries = make_queries(rng, tracks, cfg.duration_s, cfg.fps)
    ids = {q["key"]: f"{sample_id}-q{i:02d}" for i, q in enumerate(queries) if "key" in q}
    return {
        "id": sample_id, "video": video, "duration_s": float(cfg.duration_s),
        "fps": float(cfg.fps), "width": cfg.width, "height": cfg.height,
        "objects": [_track_json(tr) for tr in tracks if not tr.is_distractor],
        "distractors": [_track_json(tr) for tr in tracks if tr.is_distractor],
        "queries": [_query_json(q, f"{sample_id}-q{i:02d}", ids) for i, q in enumerate(queries)],
    }  # fmt: skip


def _track_json(track: Track) -> dict[str, Any]:
    return {
        "colour": track.colour, "shape": track.shape, "appear_s": track.appear_s,
        "disappear_s": track.disappear_s, "lane": track.lane,
    }  # fmt: skip


def _query_json(q: dict[str, Any], query_id: str, ids: dict[Any, str]) -> dict[str, Any]:
    return {
        "id": query_id, "time_s": float(q["time_s"]), "task": q["task"], "kind": q["kind"], "text": q["text"],
        "options": q["options"], "follows": ids[q["follows_key"]] if "follows_key" in q else None,
        "trigger": q.get("trigger"), "answer": q["answer"],
        "evidence_s": [round(float(x), 4) for x in q["evidence_s"]], "window_s": q.get("window_s"),
    }  # fmt: skip


def _check_knobs(cfg: SyntheticConfig) -> None:
    problems = []
    if cfg.videos < 1:
        problems.append(f"videos must be >= 1, got {cfg.videos}")
    if cfg.duration_s < 20:
        problems.append(f"duration_s must be >= 20, got {cfg.duration_s}")
    if cfg.fps <= 0:
        problems.append(f"fps must be > 0, got {cfg.fps}")
    if cfg.width % 2 or cfg.height % 2 or cfg.width < 3 * cfg.object_size:
        problems.append(f"width and height must be even and width >= 3 * object_size, got {cfg.width}x{cfg.height}")
    if not cfg.object_size >= 8:
        problems.append(f"object_size must be >= 8, got {cfg.object_size}")
    elif not lane_centres(cfg.height, cfg.object_size):
        problems.append(f"height {cfg.height} has no room for a lane of object_size {cfg.object_size}")
    if not 1 <= cfg.objects <= len(COLOURS) * len(SHAPES):
        problems.append(f"objects must be in 1..{len(COLOURS) * len(SHAPES)} (unique colour-shape pairs)")
    if cfg.distractors < 0:
        problems.append(f"distractors must be >= 0, got {cfg.distractors}")
    if problems:
        raise ConfigError("dataset=synthetic: " + "; ".join(problems))


def _parse_letter(text: str, options: tuple[str, ...]) -> str | None:
    """A leading letter ("B", "(B)", "B. red"), else a unique option text, else any standalone letter."""
    letters = "ABCD"[: len(options)]
    lead = re.match(rf"\s*\(?([{letters}])(?:[.:)]|\s*$)", text)
    if lead:
        return lead.group(1)
    named = [i for i, o in enumerate(options) if re.search(rf"\b{re.escape(o)}\b", text, re.IGNORECASE)]
    if len(named) == 1:
        return _letter(named[0])
    loose = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text)
    return loose.group(1) if loose else None


def _first_word(text: str, words: tuple[str, ...], plural: bool = False) -> str | None:
    """The first of `words` that occurs as a whole word (case-insensitive), by position in text."""
    suffix = "s?" if plural else ""
    found = re.search(rf"\b({'|'.join(words)}){suffix}\b", text, re.IGNORECASE)
    return found.group(1).lower() if found else None


def _letter(index: int) -> str:
    return "ABCD"[index]
