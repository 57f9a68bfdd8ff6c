"""One job in process: no future leakage, exact resume, error records, config-hash guard."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.base import BACKENDS
from harness.benchmarks.base import DATASETS
from harness.errors import ConfigError, DataError
from harness.records import Query, Request, Response
from harness.registry import Choice
from harness.runner import job as job_module
from harness.runner import store
from harness.runner.job import run_job
from tests.helpers import compose_job

SENTINEL = "TRUTH-SENTINEL"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _records(out_dir: Path):
    return store.read_job(out_dir)


def _query_count(job) -> int:
    return sum(len(s.queries) for s in DATASETS.build(job.dataset).load())


@dataclass(frozen=True)
class WatchConfig:
    name: str = "watch"


@BACKENDS.register("watch", WatchConfig)
class Watch:
    """Records every request it gets and answers "yes" (so proactive triggers fire)."""

    requests: list[Request] = []

    def __init__(self, cfg: WatchConfig) -> None:
        self.cfg = cfg

    async def generate(self, request: Request) -> Response:
        Watch.requests.append(request)
        return Response("yes A. red", tokens_in=1, tokens_out=1)

    async def aclose(self) -> None:
        pass


def test_no_frame_from_the_future_and_no_truth_reaches_the_backend(data_root, tmp_path, monkeypatch):
    job, run, shard = compose_job(data_root, "scheduler=rule")
    samples = DATASETS.build(job.dataset).load()
    # plant a sentinel in every truth: if any of it reached a request, the scan below finds it
    poisoned = [
        dataclasses.replace(
            s, truths={k: dataclasses.replace(t, answer=f"{SENTINEL}-{k}") for k, t in s.truths.items()}
        )
        for s in samples
    ]
    monkeypatch.setattr(type(DATASETS.build(job.dataset)), "load", lambda self: poisoned)
    monkeypatch.setattr(type(DATASETS.build(job.dataset)), "score", lambda self, *a: (0.0, {}))
    Watch.requests.clear()
    job = dataclasses.replace(job, backend=Choice("backend", "watch", WatchConfig()))
    run_job(job, run, shard, tmp_path / "job")

    asked = {q.id: q for s in samples for q in s.queries}
    assert len(Watch.requests) >= len(asked)
    for request in Watch.requests:
        assert request.frames, "every call sees at least the frame on screen"
        assert all(f.time_s <= request.time_s for f in request.frames)
        assert SENTINEL not in repr(request)
    for record in _records(tmp_path / "job"):
        assert record.error is None
        query = asked[record.query_id]
        assert max(record.frame_times_s) <= (record.response_time_s or query.time_s)
    assert not {"answer", "evidence_s", "window_s"} & {f.name for f in dataclasses.fields(Query)}
    assert not {"answer", "evidence_s", "window_s"} & {f.name for f in dataclasses.fields(Request)}


def test_rerun_reuses_every_record_and_calls_no_model(data_root, tmp_path):
    job, run, shard = compose_job(data_root, "scheduler=force_s2")
    first = run_job(job, run, shard, tmp_path / "job")
    assert first.new == _query_count(job) and first.model_calls >= first.new
    second = run_job(job, run, shard, tmp_path / "job")
    assert (second.new, second.model_calls, second.reused) == (0, 0, first.new)
    assert second.summary == first.summary
    ids = Counter(r.query_id for r in _records(tmp_path / "job"))
    assert set(ids.values()) == {1}
    assert sorted(p.name for p in (tmp_path / "job" / "shards").glob("*.done")) == [
        f"shard-000{i}-of-0004.done" for i in range(4)
    ]


def test_one_shard_per_job_fills_the_same_folder(data_root, tmp_path):
    results = [run_job(*compose_job(data_root, f"shard.index={i}"), tmp_path / "job") for i in range(4)]
    job, *_ = compose_job(data_root)
    assert sum(r.new for r in results) == _query_count(job)
    assert results[-1].summary["n"] == _query_count(job)


def test_partial_records_resume_with_one_record_per_query(data_root, tmp_path):
    job, run, shard = compose_job(data_root)
    run_job(job, run, shard, tmp_path / "job")
    records = _records(tmp_path / "job")
    # keep a third of the lines and tear the next one, as a SIGKILL mid-write would
    path = next((tmp_path / "job" / "shards").glob("*.jsonl"))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 3]) + lines[len(lines) // 3][:25])
    for done in (tmp_path / "job" / "shards").glob("*.done"):
        done.unlink()
    again = run_job(job, run, shard, tmp_path / "job")
    assert again.new == len(lines) - len(lines) // 3
    resumed = _records(tmp_path / "job")
    assert Counter(r.query_id for r in resumed) == Counter(r.query_id for r in records)
    # deterministic backend: the resumed answers equal the first run's, sequential turns included
    assert {r.query_id: r.parsed for r in resumed} == {r.query_id: r.parsed for r in records}


def test_a_video_lost_after_the_check_gives_error_records_and_the_rest_goes_on(data_root, tmp_path, monkeypatch):
    job, run, shard = compose_job(data_root)
    samples = DATASETS.build(job.dataset).load()
    broken = [dataclasses.replace(samples[0], video=str(tmp_path / "gone.mp4")), *samples[1:]]
    monkeypatch.setattr(type(DATASETS.build(job.dataset)), "load", lambda self: broken)
    with pytest.raises(DataError, match="gone.mp4 .sample syn-000.: missing"):  # the pre-sweep check stops it
        run_job(job, run, shard, tmp_path / "job")
    # the file vanishes between the check and the stream (a network drive, a concurrent cleanup)
    monkeypatch.setattr(job_module, "screen", lambda samples, *args: (list(samples), []))
    result = run_job(job, run, shard, tmp_path / "job")
    records = _records(tmp_path / "job")
    failed = [r for r in records if r.sample_id == samples[0].id]
    assert failed and all("gone.mp4" in r.error for r in failed)
    assert all(r.error is None for r in records if r.sample_id != samples[0].id)
    assert result.summary["errors"] == len(failed)

    monkeypatch.setattr(type(DATASETS.build(job.dataset)), "load", lambda self: samples)
    retried = run_job(job, dataclasses.replace(run, retry_errors=True), shard, tmp_path / "job")
    assert retried.new == len(failed) and retried.summary["errors"] == 0
    assert len(_records(tmp_path / "job")) == len(records)


def test_a_folder_of_another_config_is_refused_with_the_fix(data_root, tmp_path):
    job, run, shard = compose_job(data_root)
    run_job(job, run, shard, tmp_path / "job")
    changed, *_ = compose_job(data_root, "system.s1.window_s=6")
    with pytest.raises(ConfigError) as caught:
        run_job(changed, run, shard, tmp_path / "job")
    message = str(caught.value)
    assert "system.s1.window_s: 4.0 -> 6.0" in message and "rm -r" in message and "run.name" in message


def test_a_malformed_annotation_fails_at_load_naming_file_item_and_field(data_root, tmp_path):
    job, run, shard = compose_job(data_root)
    benchmark = DATASETS.build(job.dataset)
    benchmark.load()
    annotation = json.loads((benchmark.data_dir / "all.json").read_text())
    annotation["samples"][1]["queries"][0]["time_s"] = "soon"
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(benchmark.data_dir, copy / benchmark.data_dir.name)
    (copy / benchmark.data_dir.name / "all.json").write_text(json.dumps(annotation))
    broken, *_ = compose_job(copy)
    with pytest.raises(DataError, match=r"all\.json.*time_s"):
        run_job(broken, run, shard, tmp_path / "job")


def test_a_retrained_checkpoint_at_the_same_path_changes_the_job_hash(data_root, tmp_path):
    checkpoint = tmp_path / "indexer.pt"
    checkpoint.write_bytes(b"weights of the first training")
    job, *_ = compose_job(data_root, "router=indexer", f"router.checkpoint={checkpoint}")
    before = job.config_hash()
    assert job.semantic()["router"]["checkpoint_sha256"]
    checkpoint.write_bytes(b"weights of a second training, same path")
    assert job.config_hash() != before


def test_the_official_span_shows_frames_up_to_the_clip_end_and_the_record_says_so(data_root, tmp_path, monkeypatch):
    job, run, shard = compose_job(data_root, "+experiment=official", "system.fps=2")
    samples = DATASETS.build(job.dataset).load()
    # as OVO-Bench cuts its clips: [0, ceil(t)], capped at the duration
    clipped = [
        dataclasses.replace(
            s,
            queries=tuple(dataclasses.replace(q, clip_end_s=min(math.ceil(q.time_s), s.duration_s)) for q in s.queries),
        )
        for s in samples
    ]
    monkeypatch.setattr(type(DATASETS.build(job.dataset)), "load", lambda self: clipped)
    run_job(job, run, shard, tmp_path / "official")
    ends = {q.id: q.clip_end_s for s in clipped for q in s.queries}
    records = [r for r in _records(tmp_path / "official") if r.kind != "proactive"]
    assert records and all(r.span_end_s == ends[r.query_id] for r in records)
    assert all(max(r.frame_times_s) <= r.span_end_s for r in records)
    assert any(max(r.frame_times_s) > r.time_s for r in records)  # the ceil shows frames past t, and says so

    streaming, *_ = compose_job(data_root, "system.fps=2")
    run_job(streaming, run, shard, tmp_path / "streaming")
    for record in _records(tmp_path / "streaming"):
        assert record.span_end_s is None
        assert not record.frame_times_s or max(record.frame_times_s) <= (record.response_time_s or record.time_s)


def test_s1_and_s2_on_their_own_backends_one_instance_per_distinct_config(data_root, tmp_path):
    job, run, shard = compose_job(
        data_root, "backend@system.s2.backend=reference", "system.s2.backend.tokens_per_frame=7"
    )
    backends = job_module._backends(job)
    assert backends["S1"] is not backends["S2"] and backends["S2"].cfg.tokens_per_frame == 7
    run_job(job, run, shard, tmp_path / "job")
    for record in _records(tmp_path / "job"):
        if record.n_calls == 1 and record.frame_times_s:  # one call: its visual tokens are that route's
            per_frame = 7 if record.route == "S2" else 64
            assert record.visual_tokens == per_frame * len(record.frame_times_s)
    assert "backend" in job.semantic()["system"]["s2"] and "backend" not in job.semantic()["system"]["s1"]
    same, *_ = compose_job(data_root, "backend@system.s1.backend=reference")  # the job's own config: loaded once
    shared = job_module._backends(same)
    assert shared["S1"] is shared["S2"]


def test_both_records_each_routes_answer_score_and_usage_and_keeps_the_configured_one(data_root, tmp_path):
    run_job(*compose_job(data_root, "scheduler=both", "router=uniform"), tmp_path / "job")
    records = store.read_job(tmp_path / "job")
    assert records and not any(r.has_error for r in records)
    for record in records:
        s1, s2 = record.paths["S1"], record.paths["S2"]
        assert (record.policy, record.route, record.response, record.score) == (
            "both",
            "S2",
            s2["response"],
            s2["score"],
        )
        assert record.n_calls == s1["n_calls"] + s2["n_calls"] and s1["confidence"] is not None
        assert record.kind == "proactive" or s1["n_calls"] == s2["n_calls"] == 1  # a proactive query polls each
        if record.kind == "proactive":  # its polls are counted apart too (a simulated cascade pays S2's answer only)
            assert 0 < s2["polls"]["n_calls"] <= s2["n_calls"] and s2["polls"]["latency_s"] <= s2["latency_s"]
        assert record.cost_usd == pytest.approx(s1["cost_usd"] + s2["cost_usd"])
        assert record.question and set(record.features) == {"memory_frames", "since_scene_change_s"}


def test_modelled_latency_without_a_latency_model_fails_before_any_work(data_root, tmp_path):
    job, run, shard = compose_job(data_root, "system.latency=modelled", "backend@system.s2.backend=openai")
    with pytest.raises(
        ConfigError, match=r"the S2 backend \(openai\) has no latency model; set system.s2.latency_model="
    ):
        run_job(job, run, shard, tmp_path / "job")
    assert not list((tmp_path / "job").rglob("*.jsonl"))
