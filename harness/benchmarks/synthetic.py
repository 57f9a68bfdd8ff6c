"""The embedded synthetic benchmark: generated on first use, so the harness runs end to end offline.

Coloured shapes come and go over a textured background; the five task families ask about what is
on screen now, a detail seen once long ago, counts and order so far, a two-turn exchange, and an
event to wait for. Everything is a function of the knobs, so the data folder is named by a hash
of them and is generated once, atomically, then only read. The question grammar lives in
`synthetic_questions`, the pixels in `synthetic_video`; the folder is written and read in the
five-part layout of `dualstream_format`, and asked and scored by the rules of `dualstream`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.benchmarks.base import DATASETS, BadItem
from harness.benchmarks.dualstream import DualStreamRules
from harness.benchmarks.dualstream_format import ANNOTATION, PARTS, read_folder, write_folder
from harness.benchmarks.synthetic_questions import make_queries
from harness.benchmarks.synthetic_video import COLOURS, SHAPES, Track, lane_centres, plan_tracks, render_video
from harness.errors import ConfigError
from harness.records import StreamSample

GENERATOR_VERSION = 3  # bump when the generator changes what it writes: the data folder changes too
TASKS = PARTS
NOT_DATA = ("name", "root", "on_bad_item")  # config fields that do not change the data (not in the spec)


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
    on_bad_item: BadItem = BadItem.fail


@DATASETS.register("synthetic", SyntheticConfig)
class Synthetic(DualStreamRules):
    """Adapter of the synthetic benchmark: generates the data on first use, then reads it (the five-part layout)."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        _check_knobs(cfg)
        self.cfg = cfg

    @property
    def spec(self) -> dict[str, Any]:
        """Every knob that changes the data, and the generator version."""
        knobs = {k: v for k, v in asdict(self.cfg).items() if k not in NOT_DATA}
        for key in ("duration_s", "fps"):
            knobs[key] = float(knobs[key])
        return {"generator": GENERATOR_VERSION, **knobs}

    @property
    def data_dir(self) -> Path:
        digest = hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()
        return Path(self.cfg.root) / digest[:10]

    def load(self) -> list[StreamSample]:
        """Read the samples, generating the data folder first if it is not there yet."""
        if not (self.data_dir / ANNOTATION).exists():
            self._generate()
        return read_folder(self.data_dir)

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
                if not (target / ANNOTATION).exists():  # not a concurrent generator: a real failure
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def write_dataset(cfg: SyntheticConfig, spec: dict[str, Any], out: Path) -> None:
    """Generate all videos and annotation files of `cfg` into the folder `out`."""
    (out / "videos").mkdir(parents=True, exist_ok=True)
    workers = max(1, min(cfg.videos, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # the encoder releases the GIL; each video has its own rng
        samples = list(pool.map(lambda index: _write_sample(cfg, index, out), range(cfg.videos)))
    write_folder(out, {"benchmark": "synthetic", "version": GENERATOR_VERSION, "spec": spec}, samples)


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
