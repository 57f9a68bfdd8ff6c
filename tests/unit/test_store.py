"""Shard files: append-and-flush, torn last line repaired, atomic rewrite."""

from __future__ import annotations

import pytest

from harness.errors import DataError
from harness.records import RECORD_SCHEMA, ResultRecord
from harness.runner import store


def _record(query_id: str, error: str | None = None) -> ResultRecord:
    return ResultRecord(
        schema=RECORD_SCHEMA,
        config_hash="h",
        sample_id="s",
        query_id=query_id,
        task="realtime",
        kind="mcq",
        time_s=1.0,
        route="S1",
        route_reason="forced",
        frame_times_s=(0.5, 1.0),
        response="A. red",
        parsed="A",
        score=1.0,
        latency_s=0.01,
        modelled_latency_s=0.1,
        tokens_in=10,
        tokens_out=2,
        n_calls=1,
        cost_usd=0.0,
        error=error,
    )


def test_records_round_trip_through_the_file(tmp_path):
    path = tmp_path / "shards" / f"{store.shard_stem(1, 4)}.jsonl"
    writer = store.ShardWriter(path)
    writer.append(_record("q1"))
    writer.append(_record("q2", error="BackendError: boom"))
    writer.close()
    assert path.name == "shard-0001-of-0004.jsonl"
    loaded = store.load_records(path)
    assert loaded == [_record("q1"), _record("q2", error="BackendError: boom")]
    assert [r.has_error for r in loaded] == [False, True]


def test_a_torn_last_line_is_cut_off(tmp_path):
    path = tmp_path / "s.jsonl"
    line = _record("q1").to_json() + "\n"
    path.write_text(line + _record("q2").to_json()[:40])
    assert [r.query_id for r in store.load_records(path)] == ["q1"]
    assert path.read_text() == line  # repaired in place, so the next append starts a clean line


def test_a_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(_record("q1").to_json() + "\n{not json}\n")
    with pytest.raises(DataError, match=r"s\.jsonl, line 2"):
        store.load_records(path)


def test_rewrite_replaces_the_file(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(_record("q1").to_json() + "\n" + _record("q2", "x").to_json() + "\n")
    store.rewrite(path, [r for r in store.load_records(path) if not r.has_error])
    assert [r.query_id for r in store.load_records(path)] == ["q1"]
