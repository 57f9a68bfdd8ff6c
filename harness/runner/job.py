"""One job end to end: check the folder, load samples, play unfinished streams concurrently,
append a record per query, mark finished shards, write the summary.

Resume is exact: a query with a record is never asked again (errors only with
run.retry_errors=true), and a folder written under another config hash is refused.
API backends get the run's response cache (a repeated or resumed job never pays twice for a request),
the job's budget (`run.budget_usd`: the job stops cleanly, and a later run continues it) and the job folder
(batch mode keeps its submitted batches in <job>/batches.json; a batch still running at backend.batch_timeout_s
stops the job the same clean way, and a later run collects it);
`run.estimate=true` only reports what the job would ask and cost (harness/estimate.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from analysis.summary import summarize
from backends.base import BACKENDS, Backend
from harness.benchmarks.base import DATASETS, BadItem, Benchmark
from harness.benchmarks.validate import screen
from harness.budget import Budget
from harness.config import Job, RunConfig, Scoring, ShardConfig, plain
from harness.embedding_cache import CacheCounts, EmbeddingCache, StreamTokens
from harness.encoders.base import ENCODERS, Encoder
from harness.errors import ConfigError, Interrupted
from harness.estimate import Estimate, estimate_job
from harness.judge import Judge, JudgedBenchmark, Verdict, is_judged
from harness.memory.base import MEMORIES
from harness.records import Query, ResultRecord, StreamSample
from harness.response_cache import ResponseCache
from harness.routers.base import ROUTERS
from harness.runner import folder, interrupt, lock, store
from harness.runner.plan import by_shard, shards_to_run
from harness.runner.record import build_record
from harness.scheduler import SCHEDULERS
from harness.simulator import answer_time, play
from harness.system import Answer, LatencySource, Span, StreamSystem, latency_model
from harness.video import FrameReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    out_dir: Path
    summary: dict[str, Any]
    reused: int  # records found on disk and kept
    new: int  # records written by this run
    model_calls: int  # backend calls made by this run (text-memory notes included)
    decode_s: float  # CPU time the reader threads spent decoding
    embeddings: CacheCounts  # frame embeddings reused from the cache vs computed by this run
    estimate: Estimate | None = None  # run.estimate=true: what the job would ask; nothing else was done
    budget_reached: bool = False  # run.budget_usd stopped the job before every query was asked
    batches_pending: tuple[str, ...] = ()  # batch mode: submitted batches this run stopped waiting for


def run_job(job: Job, run: RunConfig, shard: ShardConfig, out_dir: Path) -> JobResult:
    """The job, holding the locks of the shard files it writes from before it writes anything until it ends:
    a second process asked for one of them fails at once (ShardBusy). SIGTERM or SIGINT stops it cleanly
    (Interrupted, raised once the manifest says so); `run.estimate=true` writes nothing and takes no lock."""
    planned = [] if run.estimate else shards_to_run(shard.count, shard.index)
    shards_dir = Path(out_dir) / "shards"
    with lock.hold([shards_dir / f"{store.shard_stem(i, shard.count)}.lock" for i in planned]):
        return _run_job(job, run, shard, Path(out_dir))


def _run_job(job: Job, run: RunConfig, shard: ShardConfig, out_dir: Path) -> JobResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_hash = job.config_hash()
    folder.refuse_other_config(out_dir, job, config_hash)
    _check_latency_models(job)
    if run.estimate:
        return _estimate_only(job, run, shard, out_dir)
    spent_before = folder.spent_before(out_dir)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(job.semantic(), sort_keys=False))
    manifest = folder.new_manifest(out_dir, config_hash)

    benchmark = DATASETS.build(job.dataset)
    policy = getattr(job.dataset.config, "on_bad_item", BadItem.fail)
    samples, skipped = screen(benchmark.load(), policy, job.dataset.name, run.progress)
    shards_dir = out_dir / "shards"
    planned = shards_to_run(shard.count, shard.index)
    existing = folder.existing_records(
        shards_dir, run.retry_errors, {store.shard_stem(i, shard.count) for i in planned}
    )
    if spent_before is None:  # a folder from before spending was tracked: its records' price is the best bound
        spent_before = sum(r.cost_usd for r in existing.values())
    manifest["spent_usd_total"] = spent_before  # kept if this run dies: the next one still counts it
    store.write_json(out_dir / "manifest.json", manifest)
    budget = Budget(run.budget_usd, spent_before)
    grouped = by_shard(samples, shard.count)
    only = _only_queries(run.only_queries)
    todo = [(i, s) for i in planned for s in grouped[i] if any(_wanted(q.id, existing, only) for q in s.queries)]
    reused = sum(q.id in existing for i in planned for s in grouped[i] for q in s.queries)
    label = out_dir.name

    if run.torch_threads is not None:
        # one intra-op pool per op while several streams run at once: 7x slower on 2 cores (text memory job)
        torch.set_num_threads(run.torch_threads)
    stats = _Stats()
    n_queries = sum(_wanted(q.id, existing, only) for _, s in todo for q in s.queries)
    interrupted: Interrupted | None = None  # a signal that stopped the streams: no shard is done, no summary is written
    if todo:
        with tqdm(total=n_queries, desc=label, unit="query", disable=not run.progress) as bar:
            interrupted = _interruptible(
                _play_all(
                    job, run, shard.count, todo, existing, benchmark, shards_dir, config_hash, bar, stats, budget, only
                )
            )
    stopped = budget.reached or bool(stats.batches_pending) or interrupted is not None
    recorded = existing.keys() | stats.written.keys()
    for index in planned:  # a shard is done only when every query has its record (not so after run.only_queries)
        if not stopped and all(q.id in recorded for s in grouped[index] for q in s.queries):
            path = shards_dir / f"{store.shard_stem(index, shard.count)}.done"
            store.write_json(path, {"config_hash": config_hash, "samples": len(grouped[index])})

    summary = summarize({**existing, **stats.written}.values(), benchmark.tasks)
    summary["skipped"] = len(skipped)
    if interrupted is None:
        folder.write_summary(out_dir, label, config_hash, summary, benchmark.tasks, run.scoring == Scoring.robust)
    manifest.update(
        ended=folder.now(),
        reused=reused,
        new=stats.new,
        model_calls=stats.calls,
        note_calls=stats.note_calls,
        judge_calls=stats.judge_calls,
        judge_cached=stats.judge_cached,
        cached_calls=stats.cached_calls,  # model calls served from the response cache (notes included)
        cost_usd=round(stats.cost_usd, 6),  # this run's calls at list prices, cached ones included
        spent_usd=round(budget.spent_usd, 6),  # what this run paid (cache hits are free)
        spent_usd_total=round(budget.total_usd, 6),  # what every run into this folder paid
        retries=dict(stats.retries),  # failed API tries that were retried, by kind
        budget_reached=folder.budget_note(run, budget, n_queries - stats.new),
        batches_pending=stats.batches_pending,  # submitted batches this run stopped waiting for (batches.json)
        embeddings=vars(stats.embeddings),
        decode_s=round(stats.decode_s, 3),
        skipped=[{"sample": p.sample_id, "query": p.query_id, "problem": p.text} for p in skipped],
        interrupted=None if interrupted is None else signal.Signals(interrupted.signum).name,
    )
    store.write_json(out_dir / "manifest.json", manifest)
    if interrupted is not None:
        log.warning("%s: %s (%d new records kept)", label, interrupted, stats.new)
        raise interrupted
    if budget.reached:
        log.warning(
            "%s: run.budget_usd=%g reached ($%.4f spent in all): %d queries not asked and not recorded; "
            "run again with a larger run.budget_usd to continue exactly where this stopped",
            label,
            run.budget_usd,
            budget.total_usd,
            n_queries - stats.new,
        )
    if stats.batches_pending:
        log.warning(
            "%s: %d submitted batches not finished (backend.batch_timeout_s): %d queries not recorded; run the "
            "job again to collect them (%s)",
            label,
            len(stats.batches_pending),
            n_queries - stats.new,
            out_dir / "batches.json",
        )
    if stats.new == 0 and not stopped:
        log.info("%s: all %d queries already recorded: no model called", label, reused)
    else:
        log.info(
            "%s: %d records reused, %d new (%d errors), %d model calls",
            label,
            reused,
            stats.new,
            stats.errors,
            stats.calls,
        )
    if stats.cached_calls or budget.spent_usd:
        log.info(
            "%s: %d model calls served from the response cache; $%.4f spent (list prices)",
            label,
            stats.cached_calls,
            budget.spent_usd,
        )
    if stats.embeddings.reused or stats.embeddings.computed:
        log.info(
            "%s: frame embeddings: %d reused from the cache, %d computed",
            label,
            stats.embeddings.reused,
            stats.embeddings.computed,
        )
    return JobResult(
        out_dir,
        summary,
        reused,
        stats.new,
        stats.calls,
        stats.decode_s,
        stats.embeddings,
        None,
        budget.reached,
        tuple(stats.batches_pending),
    )


def _interruptible(main: Coroutine[Any, Any, None]) -> Interrupted | None:
    """Plays the streams; SIGTERM or SIGINT stops them cleanly and is returned, for the manifest to say so."""
    try:
        interrupt.run(main)
    except Interrupted as e:
        return e
    return None


def _estimate_only(job: Job, run: RunConfig, shard: ShardConfig, out_dir: Path) -> JobResult:
    """run.estimate=true: the job's expected calls, images, tokens and cost; nothing is written or called."""
    benchmark = DATASETS.build(job.dataset)
    policy = getattr(job.dataset.config, "on_bad_item", BadItem.fail)
    samples, _ = screen(benchmark.load(), policy, job.dataset.name, run.progress)
    recorded = set()
    for path in sorted((out_dir / "shards").glob("shard-*.jsonl")):
        recorded |= {r.query_id for r in store.load_records(path) if not (run.retry_errors and r.has_error)}
    grouped = by_shard(samples, shard.count)
    mine = [s for i in shards_to_run(shard.count, shard.index) for s in grouped[i]]
    estimate = estimate_job(job, benchmark, mine, recorded)
    return JobResult(out_dir, {}, estimate.recorded, 0, 0, 0.0, CacheCounts(), estimate)


@dataclass
class _Stats:
    written: dict[str, ResultRecord] = field(default_factory=dict)  # this run's records by query id
    new: int = 0
    errors: int = 0
    calls: int = 0
    note_calls: int = 0
    judge_calls: int = 0
    judge_cached: int = 0
    cached_calls: int = 0
    cost_usd: float = 0.0
    retries: Counter[str] = field(default_factory=Counter)
    batches_pending: list[str] = field(default_factory=list)
    decode_s: float = 0.0
    embeddings: CacheCounts = field(default_factory=CacheCounts)


async def _play_all(
    job: Job,
    run: RunConfig,
    count: int,
    todo: list[tuple[int, StreamSample]],
    existing: Mapping[str, ResultRecord],
    benchmark: Benchmark,
    shards_dir: Path,
    config_hash: str,
    bar: tqdm,
    stats: _Stats,
    budget: Budget,
    only: frozenset[str] | None = None,
) -> None:
    backends = _backends(job)
    route_backends = {route: backends[route] for route in ("S1", "S2")}
    unique = list({id(b): b for b in backends.values()}.values())
    api = [b for b in unique if hasattr(b, "attach")]  # API backends: the response cache, the budget, the folder
    responses = ResponseCache(run.response_cache) if run.response_cache and api else None
    try:
        for backend in api:
            backend.attach(responses, budget, shards_dir.parent)  # type: ignore[attr-defined]
    except BaseException:
        for backend in unique:
            await backend.aclose()
        if responses is not None:
            responses.close()
        raise
    scheduler_args = (backends["scheduler"],) if "scheduler" in backends else ()
    scheduler, router = SCHEDULERS.build(job.scheduler, *scheduler_args), ROUTERS.build(job.router)
    encoder, cache = _encoder_and_cache(job, run, router)
    judge = _judge(job, run) if is_judged(benchmark) else None
    writers = {i: store.ShardWriter(shards_dir / f"{store.shard_stem(i, count)}.jsonl") for i, _ in todo}
    limit = asyncio.Semaphore(run.concurrency)
    official = job.system.span == Span.official
    audio = all(getattr(b, "takes_audio", False) for b in route_backends.values())

    async def stream(index: int, sample: StreamSample) -> None:
        async with limit:
            tokens = None if encoder is None else StreamTokens(encoder, cache, _cache_key(cache, sample, job, encoder))
            memory = MEMORIES.build(job.memory)
            system = StreamSystem(job.system, route_backends, scheduler, router, memory, benchmark, tokens)

            async def emit(query: Query, outcome: Answer | Exception) -> None:
                judged: dict[str, tuple[Verdict, dict[str, str | None]]] = {}
                if judge is not None and not isinstance(outcome, Exception):
                    for route, path in outcome.paths.items():  # `both` and cascades: every route's answer
                        if path.text is not None:
                            judged[route] = await _judged(judge, benchmark, query, sample, path.text)  # type: ignore[arg-type]
                span = _official_span(query) if official else (None, None)
                policy = job.scheduler.name
                record = build_record(config_hash, sample, query, outcome, benchmark, span, audio, judged, policy)
                writers[index].append(record)
                stats.written[query.id] = record
                stats.new += 1
                stats.errors += record.has_error
                stats.calls += record.n_calls
                stats.cached_calls += record.cached_calls
                stats.cost_usd += record.cost_usd
                bar.update(1)
                bar.set_postfix(errors=stats.errors, refresh=False)

            reader = FrameReader(sample.video, job.system.fps, job.system.max_side)
            try:
                await play(sample, reader, system, existing, emit, job.system.proactive.poll_s, official, only)
            finally:
                reader.close()
                stats.decode_s += reader.decode_s
                stats.note_calls += system.notes.n_calls
                stats.calls += system.notes.n_calls
                stats.cached_calls += system.notes.cached_calls
                stats.cost_usd += system.notes.cost_usd
                if tokens is not None:
                    tokens.close()

    try:
        await asyncio.gather(*(stream(i, s) for i, s in todo))
    finally:
        for each in unique:
            await each.aclose()
            stats.retries.update(getattr(each, "retries", {}))
            stats.batches_pending += getattr(each, "batches_pending", ())
        if responses is not None:
            responses.close()
        if judge is not None:
            await judge.aclose()
            stats.judge_calls, stats.judge_cached = judge.calls, judge.cached
        for writer in writers.values():
            writer.close()
        if cache is not None:
            stats.embeddings = cache.counts


def _backends(job: Job) -> dict[str, Backend]:
    """A backend per route (and for a scheduler that asks a model), one instance per distinct config: S1, S2
    and the `llm` policy on the same model load it once."""
    built: dict[str, Backend] = {}
    routes = {}
    choices = job.route_backends()
    if (asked := job.scheduler_backend()) is not None:
        choices["scheduler"] = asked
    for route, choice in choices.items():
        key = json.dumps(plain(choice.config), sort_keys=True, default=str)
        if key not in built:
            built[key] = BACKENDS.build(choice)
        routes[route] = built[key]
    return routes


def _check_latency_models(job: Job) -> None:
    """`system.latency=modelled` needs, per route, a latency model of its own or one from the backend."""
    if job.system.latency != LatencySource.modelled:
        return
    for route, choice in job.route_backends().items():
        if latency_model(job.system, route) is None and not getattr(
            BACKENDS.implementation(choice.name), "models_latency", False
        ):
            raise ConfigError(
                f"system.latency=modelled: the {route} backend ({choice.name}) has no latency model; set "
                f"system.{route.lower()}.latency_model={{base_s: ..., per_frame_s: ..., per_visual_token_s: ..., "
                "per_output_token_s: ...}} (seconds), or use system.latency=measured"
            )


def _only_queries(path: str | None) -> frozenset[str] | None:
    """The query ids of `run.only_queries` (one per line); None: every query."""
    if path is None:
        return None
    try:
        ids = frozenset(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
    except OSError as e:
        raise ConfigError(f"run.only_queries={path}: cannot read the list of query ids ({e.strerror})") from None
    if not ids:
        raise ConfigError(f"run.only_queries={path}: the file lists no query ids (one per line)")
    return ids


def _wanted(query_id: str, existing: Mapping[str, ResultRecord], only: frozenset[str] | None) -> bool:
    return query_id not in existing and (only is None or query_id in only)


def _official_span(query: Query) -> tuple[float | None, float | None]:
    """(start, end) of the frames a query was shown under `system.span=official`, where the benchmark sets them."""
    end = answer_time(query, official_span=True) if query.clip_end_s is not None else None
    return query.clip_start_s, end


def _judge(job: Job, run: RunConfig) -> Judge:
    cache = ResponseCache(run.judge_cache) if run.judge_cache else None
    return Judge(job.judge, BACKENDS.build(job.judge_backend()), cache)


async def _judged(
    judge: Judge, benchmark: JudgedBenchmark, query: Query, sample: StreamSample, response: str
) -> tuple[Verdict, dict[str, str | None]]:
    truth = sample.truths[query.id]
    outputs = await judge.outputs(benchmark.judge_prompts(query, truth, response))
    return benchmark.judge_verdict(query, truth, outputs), outputs


def _encoder_and_cache(job: Job, run: RunConfig, router: object) -> tuple[Encoder | None, EmbeddingCache | None]:
    """The encoder only when the router or the memory scores embeddings; the cache unless turned off."""
    memory_class = MEMORIES.implementation(job.memory.name)
    if not (getattr(router, "needs_tokens", False) or memory_class.needs_tokens):
        return None, None
    encoder = ENCODERS.build(job.encoder)
    check = getattr(router, "check_encoder", None)
    if check is not None:
        check(encoder.identity)
    return encoder, EmbeddingCache(run.embedding_cache) if run.embedding_cache else None


def _cache_key(cache: EmbeddingCache | None, sample: StreamSample, job: Job, encoder: Encoder) -> str | None:
    if cache is None:
        return None
    try:
        return cache.key(sample.video, job.system.fps, job.system.max_side, encoder.identity)
    except OSError:  # a missing video: its error records come from the reader
        return None
