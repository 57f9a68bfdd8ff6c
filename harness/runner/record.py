"""One query's record: the kept route's answer on top, every path's answer, score and usage in `paths`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.benchmarks.base import Benchmark
from harness.judge import Verdict
from harness.records import RECORD_SCHEMA, Query, ResultRecord, StreamSample
from harness.system import Answer, PathAnswer


def build_record(
    config_hash: str,
    sample: StreamSample,
    query: Query,
    outcome: Answer | Exception,
    benchmark: Benchmark,
    span: tuple[float | None, float | None] = (None, None),
    audio: bool = False,
    judged: Mapping[str, tuple[Verdict, Mapping[str, str | None]]] | None = None,
    policy: str = "",
) -> ResultRecord:
    """The record of one query: the kept route's answer on top, every path's answer and usage in `paths`."""
    common = dict(
        schema=RECORD_SCHEMA,
        config_hash=config_hash,
        sample_id=sample.id,
        query_id=query.id,
        task=query.task,
        kind=query.kind,
        time_s=query.time_s,
        span_start_s=span[0],
        span_end_s=span[1],
        policy=policy,
        question=query.text,
    )
    if isinstance(outcome, Exception):
        return ResultRecord(**common, error=f"{type(outcome).__name__}: {outcome}")  # type: ignore[arg-type]
    judged = judged or {}
    paths: dict[str, dict[str, Any]] = {"scheduler": vars(outcome.scheduler)} if outcome.scheduler.n_calls else {}
    kept: dict[str, Any] = {}
    for route, path in outcome.paths.items():
        parsed, score, subscores = scored(benchmark, sample, query, path, judged.get(route))
        paths[route] = {
            **vars(path.usage),
            "response": path.text,
            "parsed": parsed,
            "score": score,
            "subscores": subscores,
            "confidence": path.confidence,
            "response_time_s": path.response_time_s,
            "answered_at_s": path.answered_at_s,
        }
        if path.polls is not None and path.polls.n_calls:  # a proactive query's polls, within the usage above
            polls = vars(path.polls)
            paths[route]["polls"] = {k: polls[k] for k in ("n_calls", "latency_s", "modelled_latency_s", "cost_usd")}
        if route == outcome.decision.route:
            kept = {"parsed": parsed, "score": score, "subscores": subscores}
    verdict, judge_outputs = judged.get(outcome.decision.route, (None, {}))
    usage = outcome.usage
    memory = outcome.memory
    return ResultRecord(
        **common,  # type: ignore[arg-type]
        route=outcome.decision.route,
        route_reason=outcome.decision.reason,
        route_score=outcome.decision.score,
        features=outcome.features,
        paths=paths,
        answered_at_s=outcome.answered_at_s,
        frame_times_s=outcome.frame_times_s,
        response=outcome.text,
        **kept,
        latency_s=usage.latency_s,
        modelled_latency_s=usage.modelled_latency_s,
        tokens_in=usage.tokens_in,
        tokens_out=usage.tokens_out,
        visual_tokens=usage.visual_tokens,
        ttft_s=usage.ttft_s,
        n_calls=usage.n_calls,
        cached_calls=usage.cached_calls,
        cost_usd=usage.cost_usd,
        response_time_s=outcome.response_time_s,
        memory_frames=memory.frames,
        memory_tokens=memory.tokens,
        memory_bytes=memory.bytes,
        memory_notes=memory.notes,
        audio=audio,
        judge_outputs={k: "" if v is None else v for k, v in judge_outputs.items()},
        judge_failed=verdict.failed if verdict is not None else (),
    )


def scored(
    benchmark: Benchmark,
    sample: StreamSample,
    query: Query,
    path: PathAnswer,
    judged: tuple[Verdict, Mapping[str, str | None]] | None,
) -> tuple[str | None, float, dict[str, float]]:
    """(parsed, score, subscores) of one route's answer: the judge's verdict, or the benchmark's own rules."""
    parsed = None if path.text is None else benchmark.parse(query, path.text)
    if judged is not None:
        return parsed, judged[0].score, dict(judged[0].subscores)
    score, subscores = benchmark.score(query, sample.truths[query.id], parsed, path.response_time_s)
    return parsed, score, dict(subscores)
