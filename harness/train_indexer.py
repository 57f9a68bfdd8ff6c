"""Train the `indexer` router's scorer from a benchmark's evidence times, and write its checkpoint.

    python -m harness.train_indexer dataset=synthetic encoder=patch_color [overrides] [flags]

Positional arguments are Hydra overrides of conf/ (as for run_sweep.py: dataset.*, encoder.*,
system.fps, system.max_side). Training uses the benchmark's *train split*: the same synthetic
generator with `dataset.seed=1000 dataset.videos=24` (evaluation uses seed 0), so no training video
is an evaluation video; an override of either on the command line wins. Flags: --out (default
checkpoints/indexer-<encoder>.pt, where conf/router/indexer.yaml looks), --epochs, --lr, --batch,
--heads, --head-dim, --held-out (share of videos kept out of training to measure recall), --topk,
--seed, --device.

One example per query with evidence: the query's tokens, every stream frame up to the query time
(the candidates, frames at system.fps), and the frames whose time lies inside an evidence interval
(the positives; a query with none is skipped). Loss: listwise softmax cross-entropy over the
candidates against a uniform target over the positives (evidence labels as supervision).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import HydraException
from omegaconf import OmegaConf
from tqdm import tqdm

from harness.benchmarks.base import DATASETS
from harness.config import load_job, register
from harness.embedding_cache import EmbeddingCache
from harness.encoders.base import ENCODERS, Encoder
from harness.errors import ConfigError, DataError
from harness.records import Query, StreamSample
from harness.routers.cos_sim import fine_scores
from harness.routers.indexer import LightningIndexer, save_checkpoint
from harness.video import sample_frames

# dataset knobs of the train split, applied where the dataset has them and the command line does not set them:
# another seed than the evaluated one (0), and more videos (24 x 60 s: about 240 examples)
TRAIN_SPLIT = {"seed": 1000, "videos": 24}
ENCODE_BATCH = 64  # frames per encode_frames call


@dataclass(frozen=True)
class Example:
    """One query: its tokens, the candidate frames' tokens up to the query time, which of them are evidence."""

    sample_id: str
    query_id: str
    query: torch.Tensor  # [S, D]
    candidates: torch.Tensor  # [C, P, D], frames with time_s <= the query time, in time order
    positives: torch.Tensor  # [C] bool, the frame lies inside an evidence interval


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 60
    lr: float = 3e-3
    batch: int = 4  # examples per optimiser step
    heads: int = 4
    head_dim: int = 64
    held_out: float = 0.25  # share of samples (videos) kept out of training for the recall check
    topk: int = 8  # k of the reported recall@k (the router's default topk)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


@dataclass
class TrainResult:
    model: LightningIndexer
    stats: dict[str, Any] = field(default_factory=dict)  # losses per epoch, held-out recall, counts


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    try:
        overrides = train_split_overrides(args.overrides)
        job, run, _ = load_job(_compose(overrides))
        encoder = ENCODERS.build(job.encoder)
        benchmark = DATASETS.build(job.dataset)
        samples = benchmark.load()
        print(f"train_indexer: {len(samples)} videos of dataset={job.dataset.name} ({' '.join(overrides)})")
        cache = EmbeddingCache(run.embedding_cache) if run.embedding_cache else None
        fps, max_side = job.system.fps, job.system.max_side
        examples = build_examples(samples, encoder, benchmark.prompt, fps, max_side, cache, progress=not args.quiet)
        if not examples:
            raise DataError(f"dataset={job.dataset.name}: no query has an evidence frame at or before its time")
    except (ConfigError, DataError, HydraException) as e:
        print(f"train_indexer: {e}", file=sys.stderr)
        return 2
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    options = TrainOptions(
        epochs=args.epochs,
        lr=args.lr,
        batch=args.batch,
        heads=args.heads,
        head_dim=args.head_dim,
        held_out=args.held_out,
        topk=args.topk,
        seed=args.seed,
        device=device,
        progress=not args.quiet,
    )
    result = train(examples, options)
    out = Path(args.out or f"checkpoints/indexer-{job.encoder.name}.pt")
    meta = {
        "encoder": {"name": job.encoder.name, "identity": encoder.identity, "config": _plain(job.encoder.config)},
        "dataset": {
            "name": job.dataset.name,
            "config": _plain(job.dataset.config),
            "fps": job.system.fps,
            "max_side": job.system.max_side,
        },
        "train": result.stats,
        "command": " ".join(["python -m harness.train_indexer", *(argv if argv is not None else sys.argv[1:])]),
    }
    save_checkpoint(out, result.model, meta)
    print(_summary(result.stats))
    print(f"wrote {out} (use it with router=indexer router.checkpoint={out})")
    return 0


def train_split_overrides(overrides: Sequence[str]) -> list[str]:
    """The command line's overrides, preceded by the TRAIN_SPLIT knobs the dataset has and the line does not set."""
    dataset = _compose(list(overrides)).dataset
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    split = [f"dataset.{k}={v}" for k, v in TRAIN_SPLIT.items() if k in dataset and f"dataset.{k}" not in given]
    return [*split, *overrides]


def build_examples(
    samples: Sequence[StreamSample],
    encoder: Encoder,
    prompt: Callable[[Query], str],
    fps: float,
    max_side: int,
    cache: EmbeddingCache | None = None,
    progress: bool = True,
) -> list[Example]:
    """Decode and encode each video once at the stream's fps; one example per query with evidence on screen.

    Frame tokens come from the sweeps' embedding cache when it holds them (same key: video, fps, size, encoder).
    The query is encoded from `prompt(query)`, the text the routers score at run time (options included).
    """
    examples: list[Example] = []
    for sample in tqdm(samples, desc="encode videos", unit="video", disable=not progress):
        times, tokens = _stream_tokens(sample.video, encoder, fps, max_side, cache)
        for query in sample.queries:
            truth = sample.truths.get(query.id)
            if truth is None or not truth.evidence_s:
                continue
            if len(truth.evidence_s) % 2:
                raise DataError(f"{sample.id}, query {query.id}: evidence_s must hold (start, end) pairs")
            count = int((times <= query.time_s + 1e-9).sum())
            positives = in_intervals(times[:count], truth.evidence_s)
            if not positives.any():
                continue
            examples.append(Example(sample.id, query.id, encoder.encode_text(prompt(query)), tokens[:count], positives))
    return examples


def in_intervals(times: torch.Tensor, evidence_s: Sequence[float]) -> torch.Tensor:
    """Which times lie inside any (start, end) pair of a flat [start, end, start, end, ...] list (ends included)."""
    bounds = torch.tensor(evidence_s, dtype=times.dtype).view(-1, 2)
    inside = (times[:, None] >= bounds[None, :, 0] - 1e-9) & (times[:, None] <= bounds[None, :, 1] + 1e-9)
    return inside.any(dim=1)


def train(examples: Sequence[Example], options: TrainOptions) -> TrainResult:
    """Fit a LightningIndexer on all but the held-out samples; report held-out recall@k."""
    if not examples:
        raise ValueError("no training examples: no query has an evidence frame at or before its time")
    torch.manual_seed(options.seed)
    fit, held_out = split_by_sample(examples, options.held_out)
    model = LightningIndexer(examples[0].query.shape[-1], options.heads, options.head_dim).to(options.device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=options.lr)
    order_rng = random.Random(options.seed)
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(range(options.epochs), desc="train indexer", unit="epoch", disable=not options.progress)
    for _ in bar:
        order = list(range(len(fit)))
        order_rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), options.batch):
            batch = [fit[i] for i in order[start : start + options.batch]]
            loss = torch.stack([listwise_loss(model, example, options.device) for example in batch]).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        losses.append(total / len(fit))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model = model.cpu().eval()
    evaluated = held_out or fit  # with a single video there is nothing to hold out
    with torch.no_grad():
        recall = {
            "indexer": recall_at_k(lambda e: model(e.query, e.candidates), evaluated, options.topk),
            "cos_sim_fine": recall_at_k(lambda e: fine_scores(e.query, e.candidates), evaluated, options.topk),
            "random": expected_random_recall(evaluated, options.topk),
        }
    stats = {
        "options": {k: v for k, v in asdict(options).items() if k != "progress"},
        "examples": len(fit),
        "held_out_examples": len(held_out),
        "recall_examples": len(evaluated),
        "held_out_samples": sorted({e.sample_id for e in held_out}),
        "recall_on": "held_out" if held_out else "train",
        "loss_per_epoch": losses,
        "recall_at_k": {"k": options.topk, **recall},
        "seconds": round(time.perf_counter() - started, 2),
    }
    return TrainResult(model, stats)


def listwise_loss(model: LightningIndexer, example: Example, device: str = "cpu") -> torch.Tensor:
    """Softmax cross-entropy of the candidates' scores against a uniform distribution over the positives."""
    scores = model(example.query.to(device), example.candidates.to(device))
    log_probabilities = torch.log_softmax(scores, dim=0)
    return -log_probabilities[example.positives.to(device)].mean()


def split_by_sample(examples: Sequence[Example], held_out: float) -> tuple[list[Example], list[Example]]:
    """(train, held out): the last round(held_out x samples) samples by id, at least one when there are two or more."""
    ids = sorted({e.sample_id for e in examples})
    n_held = min(len(ids) - 1, max(1, round(held_out * len(ids)))) if held_out > 0 and len(ids) > 1 else 0
    kept_out = set(ids[len(ids) - n_held :]) if n_held else set()
    return [e for e in examples if e.sample_id not in kept_out], [e for e in examples if e.sample_id in kept_out]


def recall_at_k(score: Callable[[Example], torch.Tensor], examples: Sequence[Example], k: int) -> float:
    """Mean over examples of |top-k candidates ∩ positives| / min(k, |positives|)."""
    if not examples:
        return float("nan")
    values = []
    for example in examples:
        top = torch.topk(score(example), min(k, example.positives.numel())).indices
        values.append(example.positives[top].sum().item() / min(k, int(example.positives.sum())))
    return sum(values) / len(values)


def expected_random_recall(examples: Sequence[Example], k: int) -> float:
    """recall_at_k of k candidates drawn uniformly at random, in expectation (the floor to beat)."""
    if not examples:
        return float("nan")
    values = []
    for example in examples:
        n, n_pos = example.positives.numel(), int(example.positives.sum())
        values.append(min(k, n) * n_pos / n / min(k, n_pos))
    return sum(values) / len(values)


def _stream_tokens(
    video: str, encoder: Encoder, fps: float, max_side: int, cache: EmbeddingCache | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Times [F] and tokens [F, P, D] of the stream's frames: the cached prefix, the rest encoded in batches."""
    key = cache.key(video, fps, max_side, encoder.identity) if cache is not None else None
    cached = cache.load(key) if cache is not None and key is not None else None
    known = 0 if cached is None else cached.shape[0]
    times: list[float] = []
    parts: list[torch.Tensor] = []
    pending: list[np.ndarray] = []
    for frame in sample_frames(video, fps, max_side):
        times.append(frame.time_s)
        if len(times) > known:
            pending.append(frame.pixels)
        if len(pending) == ENCODE_BATCH:
            parts.append(encoder.encode_frames(pending))
            pending = []
    if pending:
        parts.append(encoder.encode_frames(pending))
    tokens = torch.cat([cached[: len(times)]] + parts) if cached is not None else torch.cat(parts)
    if cache is not None and key is not None and parts:
        cache.store(key, tokens)
    return torch.tensor(times, dtype=torch.float64), tokens


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.train_indexer", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    defaults = TrainOptions()
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of conf/, e.g. dataset=synthetic dataset.videos=12"
    )
    parser.add_argument("--out", help="checkpoint path (default: checkpoints/indexer-<encoder>.pt)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--batch", type=int, default=defaults.batch, help="examples per optimiser step")
    parser.add_argument("--heads", type=int, default=defaults.heads)
    parser.add_argument("--head-dim", type=int, default=defaults.head_dim)
    parser.add_argument("--held-out", type=float, default=defaults.held_out, help="share of videos kept out")
    parser.add_argument("--topk", type=int, default=defaults.topk, help="k of the reported recall@k")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _compose(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    register()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("config", overrides=overrides)


def _plain(config: Any) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)  # type: ignore[return-value]


def _summary(stats: dict[str, Any]) -> str:
    recall = stats["recall_at_k"]
    losses = stats["loss_per_epoch"]
    return (
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} epochs ({stats['examples']} examples, "
        f"{stats['seconds']} s); {stats['recall_on']} recall@{recall['k']} over {stats['recall_examples']} "
        f"examples: indexer {recall['indexer']:.3f}, cos_sim_fine {recall['cos_sim_fine']:.3f}, "
        f"random {recall['random']:.3f}"
    )


if __name__ == "__main__":
    sys.exit(main())
