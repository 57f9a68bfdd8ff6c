"""Train the `classifier` scheduler from a run where both routes answered every query, and write its model.

    python -m harness.train_scheduler RUN_DIR [-o FILE] [--l2 1.0] [--correct 1.0] [--embedder-path DIR]

RUN_DIR is a job folder or a sweep folder of several jobs (outputs/<run.name>/...) run with `scheduler=both`,
so each record holds S1's and S2's answer, score, cost and latency (`paths`). One example per answered query,
labelled with the route that answered right at lower cost: a route is right when its score reaches --correct
(1.0: fully right under a benchmark's rule scoring; lower it for partial-credit or judged scores). If only one
route is right, that route; if both are right or both wrong, the cheaper one: lower cost_usd, then lower
modelled latency, then lower measured latency (S1 on a full tie). Features: the question's sentence embedding
and the stream state when it was asked (time_s, features.memory_frames, features.since_scene_change_s).
Every feature is standardised with its training mean and std; the fit is an L2-regularised logistic regression
(Newton's method, float64, deterministic).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harness.errors import ConfigError, DataError
from harness.records import ResultRecord, Route
from harness.runner.store import read_job
from harness.scheduler_learned import DEFAULT_CHECKPOINT, STREAM_FEATURES, ClassifierModel, Linear, stream_vector

BOTH_COMMAND = "python run_sweep.py scheduler=both run.name=<name> [your dataset, backend ... overrides]"
EMBED_BATCH = 64  # questions per embedder call


@dataclass(frozen=True)
class Example:
    """One answered query of a `both` run, and the route it should have taken."""

    question: str
    stream: np.ndarray  # stream_vector of the query
    label: Route
    why: str  # only S1 right | only S2 right | both right, cheaper | both wrong, cheaper


def label(paths: Mapping[str, Mapping[str, Any]], correct: float) -> tuple[Route, str]:
    """The route that answered right at lower cost (see the module docstring)."""
    right = {route: paths[route]["score"] >= correct for route in ("S1", "S2")}
    if right["S1"] != right["S2"]:
        route: Route = "S1" if right["S1"] else "S2"
        return route, f"only {route} right"
    return _cheaper(paths["S1"], paths["S2"]), "both right, cheaper" if right["S1"] else "both wrong, cheaper"


def examples(records: Sequence[ResultRecord], correct: float) -> tuple[list[Example], Counter[str]]:
    """Examples of the records that hold both routes' scores, and counts of the records left out, by why."""
    kept, skipped = [], Counter[str]()
    for record in records:
        paths = record.paths
        if record.error is not None:
            skipped["error records"] += 1
        elif any(paths.get(r, {}).get("score") is None for r in ("S1", "S2")):
            skipped["without both routes' scores"] += 1
        else:
            stream = stream_vector(
                record.time_s,
                float(record.features.get("memory_frames", record.memory_frames) or 0),
                record.features.get("since_scene_change_s"),
            )
            kept.append(Example(record.question, stream, *label(paths, correct)))
    return kept, skipped


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 100) -> tuple[np.ndarray, float, int]:
    """(weights, bias, iterations) minimising sum of log-losses + l2/2 |w|^2 (the bias unpenalised), by Newton's
    method with step halving. l2 > 0 keeps the problem strictly convex, so a separable set still converges."""
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    a = np.hstack([x, np.ones((x.shape[0], 1))])
    penalty = np.full(a.shape[1], l2)
    penalty[-1] = 0.0

    def objective(theta: np.ndarray) -> float:
        z = a @ theta
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * theta * theta))

    theta = np.zeros(a.shape[1])
    value = objective(theta)
    for iteration in range(1, max_iter + 1):
        p = np.exp(-np.logaddexp(0.0, -(a @ theta)))  # sigmoid without overflow
        gradient = a.T @ (p - y) + penalty * theta
        if np.max(np.abs(gradient)) < 1e-9 * max(1, len(y)):
            return theta[:-1], float(theta[-1]), iteration - 1
        hessian = (a * (p * (1.0 - p))[:, None]).T @ a + np.diag(penalty)
        step, size = np.linalg.solve(hessian, gradient), 1.0
        while (new_value := objective(theta - size * step)) > value and size > 1e-8:
            size /= 2
        theta, value = theta - size * step, new_value
    return theta[:-1], float(theta[-1]), max_iter


def train(
    run_dir: Path, l2: float = 1.0, correct: float = 1.0, embedder_path: str = "", progress: bool = True
) -> ClassifierModel:
    """Read the run, label its queries, embed the questions and fit; DataError when there is nothing to learn."""
    from harness.encoders.checkpoint import checkpoint_digest
    from harness.memory.text import sentence_embedder

    jobs = job_dirs(run_dir)
    if not jobs:
        raise DataError(f"{run_dir}: no job folder (one with shards/) here or below. Give outputs/<run.name>/")
    records = [(job, r) for job in jobs for r in read_job(job)]
    if not records:
        raise DataError(f"{run_dir}: the run has no records yet. Run it first: {BOTH_COMMAND}")
    records.sort(key=lambda jr: (str(jr[0]), jr[1].sample_id, jr[1].query_id))  # not shard order: deterministic
    found, skipped = examples([r for _, r in records], correct)
    if not found:
        left_out = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
        raise DataError(
            f"{run_dir}: no record holds both routes' answers ({left_out}); the classifier learns from a run where "
            f"S1 and S2 answer every query. Run one with scheduler=both: {BOTH_COMMAND}, then train on that folder"
        )
    labels = Counter(e.label for e in found)
    if len(labels) < 2:
        [(only, n)] = labels.items()
        raise DataError(
            f"{run_dir}: all {n} queries are labelled {only} (the route that answered right at lower cost), so "
            f"there is nothing to learn: route them with scheduler=force_{only.lower()}, or train on a run with "
            "questions where the other route wins (or another --correct)"
        )
    try:
        embedder = sentence_embedder(embedder_path)
    except ConfigError as e:
        raise ConfigError(f"--embedder-path: {e}") from None
    embeddings = _embed(embedder, [e.question for e in found], progress)
    x = np.hstack([embeddings, np.stack([e.stream for e in found])])
    mean, std = x.mean(axis=0), x.std(axis=0)
    # a constant feature (up to rounding) carries nothing: std 1 keeps it near 0 for any later query
    std[std <= 1e-9 * np.maximum(1.0, np.abs(mean))] = 1.0
    y = np.array([e.label == "S2" for e in found], dtype=np.float64)
    scaled = (x - mean) / std
    weights, bias, iterations = fit_logistic(scaled, y, l2)
    jobs_hashes: dict[str, set[str]] = {}
    for job, record in records:
        jobs_hashes.setdefault(str(job.relative_to(run_dir)), set()).add(record.config_hash)
    dim = embeddings.shape[1]
    return ClassifierModel(
        embedder={"path": embedder_path, "sha256": checkpoint_digest(embedder.path), "dim": dim},
        embedding=Linear(mean[:dim].tolist(), std[:dim].tolist(), weights[:dim].tolist()),
        stream=Linear(mean[dim:].tolist(), std[dim:].tolist(), weights[dim:].tolist()),
        bias=bias,
        training={
            "run": str(run_dir.resolve()),
            "jobs": {job: sorted(hashes) for job, hashes in sorted(jobs_hashes.items())},  # folder: config hashes
            "n": len(found),
            "labels": {route: labels[route] for route in ("S1", "S2")},
            "why": dict(sorted(Counter(e.why for e in found).items())),
            "skipped": dict(sorted(skipped.items())),
            "accuracy": round(float(np.mean((scaled @ weights + bias > 0) == (y == 1))), 6),  # P(S2) > 0.5 = label
            "correct": correct,
            "l2": l2,
            "iterations": iterations,
        },
    )


def job_dirs(run_dir: Path) -> list[Path]:
    """The job folders of a run: run_dir itself when it holds shards/, else every folder below that does."""
    if (run_dir / "shards").is_dir():
        return [run_dir]
    return sorted(
        p.parent
        for p in run_dir.rglob("shards")
        if p.is_dir() and not any(part.startswith(".") for part in p.relative_to(run_dir).parts)
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    if args.l2 <= 0:
        print("train_scheduler: --l2 must be > 0 (the L2 penalty keeps the fit finite)", file=sys.stderr)
        return 2
    try:
        model = train(run_dir, args.l2, args.correct, args.embedder_path, progress=not args.quiet)
    except (ConfigError, DataError) as e:
        print(f"train_scheduler: {e}", file=sys.stderr)
        return 2
    out = model.save(args.out)
    print(_summary(model.training))
    print(f"wrote {out} (use it with scheduler=classifier scheduler.checkpoint={out})")
    return 0


def _cheaper(s1: Mapping[str, Any], s2: Mapping[str, Any]) -> Route:
    for key in ("cost_usd", "modelled_latency_s", "latency_s"):
        a, b = s1.get(key), s2.get(key)
        if a is not None and b is not None and a != b:
            return "S1" if a < b else "S2"
    return "S1"


def _embed(embedder: Any, questions: list[str], progress: bool) -> np.ndarray:
    """[n, D] float64 embeddings; each distinct question is embedded once (benchmarks repeat templates)."""
    unique = sorted(set(questions))
    vectors: dict[str, np.ndarray] = {}
    batches = range(0, len(unique), EMBED_BATCH)
    for start in tqdm(batches, desc="embedding questions", unit="batch", disable=not progress or len(batches) < 2):
        chunk = unique[start : start + EMBED_BATCH]
        vectors.update(zip(chunk, embedder.embed(chunk).numpy().astype(np.float64), strict=True))
    return np.stack([vectors[q] for q in questions])


def _summary(training: Mapping[str, Any]) -> str:
    labels, why = training["labels"], ", ".join(f"{n} {w}" for w, n in training["why"].items())
    skipped = "".join(f"; left out {n} {w}" for w, n in training["skipped"].items())
    return (
        f"{training['n']} queries from {len(training['jobs'])} job(s): S1 {labels['S1']}, S2 {labels['S2']} ({why})"
        f"{skipped}; training accuracy {training['accuracy']:.3f} (l2 {training['l2']:g}, features: question "
        f"embedding + {', '.join(STREAM_FEATURES)})"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.train_scheduler", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a job or sweep folder of a scheduler=both run")
    parser.add_argument("-o", "--out", default=DEFAULT_CHECKPOINT, help=f"model file (default: {DEFAULT_CHECKPOINT})")
    parser.add_argument("--l2", type=float, default=1.0, help="L2 penalty on the weights (> 0; default 1.0)")
    parser.add_argument("--correct", type=float, default=1.0, help="a route is right when its score >= this")
    parser.add_argument("--embedder-path", default="", help='sentence-embedding model folder ("" = packaged MiniLM)')
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


if __name__ == "__main__":
    sys.exit(main())
