"""The loader: every record of every job and shard, torn lines left out, the Parquet cache, the axes, the causes."""

from __future__ import annotations

import json
import shutil

import pytest

from analysis import load as load_module
from analysis.axes import detect, flatten
from analysis.causes import error_cause, record_cause
from analysis.load import load
from harness.errors import DataError
from tests.fixtures.analysis_records import record, write_job

CONFIG = {"dataset": {"name": "synthetic", "videos": 2}, "router": {"name": "uniform", "k": 8},
          "memory": {"name": "window", "window_s": 60.0}}  # fmt: skip


def _config(**changes):
    config = json.loads(json.dumps(CONFIG))
    for key, value in changes.items():
        group, field = key.split("__")
        config[group][field] = value
    return config


def _records(n=6, **fields):
    return [record(f"v{i % 2}", f"v{i % 2}-q{i}", ("a", "b")[i % 2], float(i % 3 == 0), **fields) for i in range(n)]


def test_every_job_and_shard_is_read_and_a_torn_last_line_is_left_out(tmp_path):
    run = tmp_path / "run"
    job = write_job(run / "one", _config(), _records(6))
    write_job(run / "two", _config(router__name="recent"), _records(4))
    shard = sorted((job / "shards").glob("*.jsonl"))[0]
    whole = shard.read_bytes()
    shard.write_bytes(whole + b'{"schema":1,"sample_id":"v0","query_')  # a job killed mid-write
    loaded = load(run, cache=False)
    assert sorted(loaded.jobs) == ["one", "two"]
    assert loaded.records.groupby("job", observed=True).size().to_dict() == {"one": 6, "two": 4}
    assert shard.read_bytes().endswith(b'"query_')  # read only: the file is not repaired here
    assert set(loaded.records["shard"].astype(str)) <= {p.stem for p in (job / "shards").glob("*.jsonl")}


def test_a_broken_line_in_the_middle_names_the_file_and_line(tmp_path):
    job = write_job(tmp_path / "run" / "one", _config(), _records(3))
    shard = sorted((job / "shards").glob("*.jsonl"))[0]
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    with pytest.raises(DataError, match=rf"{shard.name}, line 2: not a result record"):
        load(tmp_path / "run", cache=False)


def test_the_parquet_cache_is_used_until_a_shard_changes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    job = write_job(run / "one", _config(), _records(6))
    first = load(run)
    assert list((run / ".analysis").glob("*.parquet"))
    monkeypatch.setattr(load_module, "read_shard", lambda *a, **k: pytest.fail("the shards were read again"))
    cached = load(run)
    assert cached.records.drop(columns=["job"]).equals(first.records.drop(columns=["job"]))
    monkeypatch.undo()
    shard = sorted((job / "shards").glob("*.jsonl"))[0]
    with shard.open("a") as f:
        f.write(record("v9", "v9-q0", "a", 1.0).to_json() + "\n")
    assert len(load(run).records) == 7


def test_axes_come_from_the_configs_not_the_folder_names(tmp_path):
    run = tmp_path / "run"
    write_job(run / "x", _config(), _records())
    write_job(run / "y", _config(router__name="recent", router__k=None), _records())
    write_job(run / "z", _config(memory__window_s=30.0), _records())
    loaded = load(run, cache=False)
    # router.k only follows router.name (each router has its fields); memory.window_s varies for one memory
    assert loaded.axes == ["router.name", "memory.window_s"]
    assert loaded.labels().loc["y"].tolist() == ["recent", "60"]
    shutil.move(run / "x", run / "renamed")
    assert load(run, cache=False).axes == loaded.axes


def test_detect_keeps_a_key_that_varies_within_one_name():
    configs = {
        "a": flatten({"router": {"name": "topk", "k": 4}}),
        "b": flatten({"router": {"name": "topk", "k": 8}}),
        "c": flatten({"router": {"name": "recent"}}),
    }
    assert detect(configs) == ["router.name", "router.k"]


def test_subscores_new_fields_and_causes_become_columns(tmp_path):
    rows = [
        record("v0", "q0", "PO", 1.0, kind="proactive", subscores={"time": 1.0, "content": 1.0}, cached_calls=1),
        record("v0", "q1", "a", 0.0, response="hmm", parsed=None),
        record("v1", "q2", "a", None, error="RateLimitError: 429 after 6 tries"),
        record("v1", "q3", "a", 0.0, judge_failed=("judgment",)),
    ]
    frame = load(write_job(tmp_path / "run" / "j", _config(), rows), cache=False).records
    frame = frame.assign(q=frame["query_id"].astype(str)).sort_values("q")
    assert frame["sub.time"].tolist()[0] == 1.0 and "sub.content" in frame
    assert frame["cached_calls"].tolist() == [1, 0, 0, 0]
    assert frame["cause"].astype(str).tolist() == ["ok", "unparseable", "rate_limit", "judge_error"]


def test_several_runs_side_by_side_differ_by_run(tmp_path):
    write_job(tmp_path / "a" / "job", _config(), _records())
    write_job(tmp_path / "b" / "job", _config(), _records())
    both = load([tmp_path / "a", tmp_path / "b"], cache=False)
    assert both.axes == ["run"] and sorted(both.jobs) == ["a/job", "b/job"]


@pytest.mark.parametrize(
    "error,cause",
    [
        ("RateLimitError: openai: 429 Too Many Requests after 6 tries", "rate_limit"),
        ("ServerError: anthropic: 529 overloaded after 4 tries", "api_error"),
        ("ApiTimeoutError: google: no answer in 60 s", "api_error"),
        ("ClientError: openai: 400 image too large", "api_error"),
        ("BackendError: backend=hf: CUDA out of memory on Qwen2.5-VL-7B for S2 with 64 frames", "out_of_memory"),
        ("BackendError: backend=hf: prompt of 9000 tokens (8700 visual, 64 frames) plus 64 new tokens exceeds the "
         "model's context of 8192", "context_overflow"),
        ("BackendError: vllm backend: ValueError: maximum context length is 4096 (fix: ...)", "context_overflow"),
        ("DataError: videos/a.mp4: cannot decode video: Invalid data found", "decode_error"),
        ("BudgetExhausted: run.budget_usd=5 reached", "budget_stop"),
        ("KeyError: 'x'", "other_error"),
    ],
)  # fmt: skip
def test_error_causes(error, cause):
    assert error_cause(error) == cause


def test_record_causes_without_an_error():
    assert record_cause(None, 0, "mcq", answered=True, parsed=False) == "unparseable"
    assert record_cause(None, 0, "open", answered=True, parsed=False) == "ok"  # judged kinds are not parsed
    assert record_cause(None, 1, "open", answered=True, parsed=True) == "judge_error"
    assert record_cause(None, 0, "proactive", answered=False, parsed=False) == "ok"  # never fired: a wrong answer
