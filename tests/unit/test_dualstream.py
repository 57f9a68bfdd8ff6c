"""The five-part layout (all.json, shards, task sets), part selection, a user folder run end to end, and the
synthetic benchmark's folder read as user data."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import fields, replace
from fractions import Fraction
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.benchmarks.base import DATASETS
from harness.benchmarks.dualstream import DualStream, DualStreamConfig
from harness.benchmarks.dualstream_format import read_folder, write_folder
from harness.benchmarks.synthetic import Synthetic, SyntheticConfig
from harness.errors import ConfigError, DataError
from harness.records import Truth
from harness.runner import store
from harness.runner.job import run_job
from tests.conftest import write_barcode_video
from tests.helpers import ROOT, compose_job

COUNT_NOW = "How many coloured objects are on screen now?"
RED_SO_FAR = "How many red objects have appeared so far?"
NUMBERS = ["0", "1", "2", "3"]


def _query(qid: str, time_s: float, task: str, text: str, answer: str, options=(), kind="mcq", **more) -> dict:
    return {
        "id": qid, "time_s": time_s, "task": task, "kind": kind, "text": text, "options": list(options),
        "follows": None, "trigger": None, "answer": answer, "evidence_s": [], "window_s": None, **more,
    }  # fmt: skip


# Questions of the synthetic grammar over a grey barcode video: the reference backend sees no coloured
# object, so it answers "0" to counts, guesses the first option otherwise, and its trigger never fires.
SAMPLES = [
    {
        "id": "cam-a", "video": "videos/cam.mp4", "duration_s": 10.0, "site": "lab",
        "queries": [
            _query("a-q0", 1.0, "proactive", "Tell me when a red object appears, and name its shape.", "star",
                   kind="proactive", trigger="Is a red object on screen now? Answer yes or no.", window_s=[6, 9]),
            _query("a-q1", 2.0, "realtime", COUNT_NOW, "A", NUMBERS),
            _query("a-q2", 3.0, "sequential", "What colour is the circle on screen now?", "B",
                   ["cyan", "yellow", "green", "blue"]),
            _query("a-q3", 4.0, "sequential", "Is an object of the colour you named in your previous answer on "
                   "screen now?", "no", kind="yes_no", follows="a-q2"),
            _query("a-q4", 6.0, "reasoning", RED_SO_FAR, "A", NUMBERS),
            _query("a-q5", 8.0, "clue", "What shape was the blue object that appeared earlier in the video?", "C",
                   ["square", "star", "circle", "triangle"]),
        ],
    },
    {
        "id": "cam-b", "video": "videos/cam.mp4", "duration_s": 10.0,
        "queries": [_query("b-q0", 5.0, "realtime", COUNT_NOW, "B", NUMBERS),
                    _query("b-q1", 9.0, "reasoning", RED_SO_FAR, "A", NUMBERS)],
    },
]  # fmt: skip
EXPECTED = {"a-q0": 0.0, "a-q1": 1.0, "a-q2": 0.0, "a-q3": 1.0, "a-q4": 1.0, "a-q5": 0.0, "b-q0": 0.0, "b-q1": 1.0}


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_barcode_video(tmp_path_factory.mktemp("video") / "cam.mp4", 100, Fraction(10))


def _write(root: Path, video: Path, samples=SAMPLES) -> Path:
    """A user folder: the samples as all.json, one shard per sample, task sets and the video."""
    write_folder(root, {"benchmark": "my_bench", "version": "1.0"}, samples, shard_samples=1)
    (root / "videos").mkdir()
    shutil.copy(video, root / "videos" / "cam.mp4")
    return root


@pytest.fixture
def root(tmp_path, video) -> Path:
    return _write(tmp_path / "data", video)


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_the_writer_makes_all_json_shards_and_task_sets(root):
    assert sorted(p.name for p in (root / "shards").iterdir()) == ["shard-0000.json", "shard-0001.json"]
    assert json.loads((root / "shards" / "shard-0001.json").read_text()) == {
        "benchmark": "my_bench", "version": "1.0", "samples": [SAMPLES[1]]
    }  # fmt: skip
    assert json.loads((root / "task_sets" / "sequential.json").read_text()) == {
        "part": "sequential", "samples": {"cam-a": ["a-q2", "a-q3"]}
    }  # fmt: skip
    assert json.loads((root / "task_sets" / "realtime.json").read_text())["samples"] == {
        "cam-a": ["a-q1"], "cam-b": ["b-q0"]
    }  # fmt: skip


def test_all_json_alone_shards_alone_and_both_give_the_same_samples(root):
    both = read_folder(root)
    assert [s.id for s in both] == ["cam-a", "cam-b"]
    assert both[0].video == str(root / "videos" / "cam.mp4") and both[1].video == both[0].video
    assert both[0].extras == {"site": "lab"} and both[1].extras == {}
    assert both[0].truths["a-q0"] == Truth("a-q0", "star", (), (6.0, 9.0))
    assert [q.follows for q in both[0].queries] == [None, None, None, "a-q2", None, None]
    shutil.move(root / "shards", root.parent / "shards")
    assert read_folder(root) == both
    shutil.move(root.parent / "shards", root / "shards")
    (root / "all.json").unlink()
    assert read_folder(root) == both


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["samples"][1]["queries"][0].update(answer="A"), r"differs in query 'b-q0', field 'answer'"),
        (lambda d: d["samples"][1].update(duration_s=12.0), r"sample 'cam-b' differs in field 'duration_s'"),
        (lambda d: d["samples"][1].update(site="home"), r"sample 'cam-b' differs in field 'site'"),
        (lambda d: d["samples"][1].update(id="cam-c"), r"sample 'cam-c' is in no file of .*shards/"),
        (lambda d: d.update(version="2.0"), r"field 'version' differs \('2.0' vs '1.0'\)"),
    ],
)  # fmt: skip
def test_all_json_and_shards_that_disagree_name_both_files(root, change, message):
    _edit(root / "all.json", change)
    with pytest.raises(DataError, match=message) as caught:
        read_folder(root)
    text = str(caught.value)
    assert str(root / "all.json") in text and str(root / "shards") in text and "delete one of them" in text


def test_a_sample_in_two_shards_or_only_in_a_shard_is_an_error(root):
    shutil.copy(root / "shards" / "shard-0001.json", root / "shards" / "shard-0002.json")
    with pytest.raises(DataError, match=r"shard-0002\.json and .*shard-0001\.json: sample 'cam-b' is in both"):
        read_folder(root)
    _edit(root / "shards" / "shard-0002.json", lambda d: d["samples"][0].update(id="cam-c", queries=[]))
    with pytest.raises(DataError, match=r"shard-0002\.json: sample 'cam-c' is not in .*all\.json"):
        read_folder(root)


def test_parts_keep_their_queries_in_table_order(root):
    bench = DualStream(DualStreamConfig(root=str(root), parts=["clue", "realtime"]))
    assert bench.tasks == ("realtime", "clue")
    samples = bench.load()
    assert [[q.id for q in s.queries] for s in samples] == [["a-q1", "a-q5"], ["b-q0"]]
    assert set(samples[0].truths) == {"a-q1", "a-q5"}
    only = DualStream(DualStreamConfig(root=str(root), parts=["sequential"])).load()
    assert [s.id for s in only] == ["cam-a"]  # cam-b has no sequential query: dropped
    (root / "task_sets" / "sequential.json").unlink()  # without its task set, a part comes from the queries' task
    assert DualStream(DualStreamConfig(root=str(root), parts=["sequential"])).load() == only
    assert DualStream(DualStreamConfig(root=str(root))).load() == read_folder(root)
    with pytest.raises(ConfigError, match=r"parts \['live'\] unknown; choose from realtime, clue"):
        DualStream(DualStreamConfig(root=str(root), parts=["live"]))


def test_a_kept_query_that_follows_a_left_out_part_is_a_config_error(tmp_path, video):
    samples = json.loads(json.dumps(SAMPLES))
    samples[0]["queries"][3]["follows"] = "a-q1"  # the follow-up refers to the realtime question
    root = _write(tmp_path / "data", video, samples)
    with pytest.raises(ConfigError, match=r"query 'a-q3' of sample 'cam-a' follows query 'a-q1' of part 'realtime'"):
        DualStream(DualStreamConfig(root=str(root), parts=["sequential"])).load()


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        ("clue", lambda d: d["samples"]["cam-a"].append("nope"),
         r"clue\.json, field 'samples', sample 'cam-a': query 'nope' is not in .*all\.json"),
        ("clue", lambda d: d["samples"]["cam-a"].append("a-q1"),
         r"clue\.json, field 'samples', sample 'cam-a': query 'a-q1' has task 'realtime' in .*all\.json "
         r"\(field 'task'\), not 'clue'"),
        ("realtime", lambda d: d["samples"].update({"cam-a": ["b-q0"], "cam-b": ["a-q1"]}),
         r"realtime\.json, field 'samples', sample 'cam-a': query 'b-q0' belongs to sample 'cam-b'"),
        ("reasoning", lambda d: d["samples"].update({"cam-z": []}),
         r"reasoning\.json, field 'samples': sample 'cam-z' is not in"),
        ("reasoning", lambda d: d["samples"].pop("cam-b"),
         r"reasoning\.json: field 'samples' lacks query 'b-q1' of sample 'cam-b'"),
        ("realtime", lambda d: d["samples"]["cam-b"].append("b-q0"), r"query 'b-q0' is listed twice"),
        ("proactive", lambda d: d.update(part="clue"), r"proactive\.json: field 'part' must be 'proactive'"),
        ("proactive", lambda d: d.update(samples=["a-q0"]), r"proactive\.json: field 'samples' must be dict"),
    ],
)  # fmt: skip
def test_a_task_set_that_disagrees_with_the_annotation_names_file_and_field(root, file, change, message):
    _edit(root / "task_sets" / f"{file}.json", change)
    with pytest.raises(DataError, match=message):
        read_folder(root)


def test_a_task_set_of_no_part_and_repeated_ids_are_errors(root):
    (root / "task_sets" / "live.json").write_text("{}")
    with pytest.raises(DataError, match=r"live\.json: 'live' is not a part; task set files are realtime, clue"):
        read_folder(root)
    (root / "task_sets" / "live.json").unlink()
    _edit(root / "all.json", lambda d: d["samples"][1]["queries"][0].update(id="a-q1"))
    shutil.rmtree(root / "shards")
    with pytest.raises(DataError, match=r"query id 'a-q1' is in samples 'cam-a' and 'cam-b'; query ids must be"):
        read_folder(root)
    _edit(root / "all.json", lambda d: d["samples"][1].update(id="cam-a"))
    with pytest.raises(DataError, match=r"all\.json, sample 1: field 'id' repeats 'cam-a' \(also sample 0\)"):
        read_folder(root)
    with pytest.raises(DataError, match=r"neither all\.json nor shards/\*\.json found.*datasets/dualstream/README"):
        read_folder(root / "videos")


def test_a_proactive_answer_outside_its_words_is_an_error(tmp_path, video):
    samples = json.loads(json.dumps(SAMPLES))
    samples[0]["queries"][0]["answer"] = "cat"
    with pytest.raises(DataError, match=r"query 0 \(id 'a-q0'\): field 'answer' must be one of circle, square"):
        read_folder(_write(tmp_path / "a", video, samples))
    samples[0]["queries"][0]["options"] = ["dog", "bird"]
    with pytest.raises(DataError, match=r"field 'answer' must be one of its options, got 'cat'"):
        read_folder(_write(tmp_path / "b", video, samples))


def test_user_folder_runs_end_to_end_with_the_reference_backend(root, tmp_path):
    job, run, shard = compose_job(root, "dataset=dualstream", "scheduler=force_s1")
    assert job.dataset.name == "dualstream" and job.dataset.config.root == str(root)
    run_job(job, run, shard, tmp_path / "job")
    records = {r.query_id: r for r in store.read_job(tmp_path / "job")}
    assert {qid: r.score for qid, r in records.items()} == EXPECTED
    assert all(r.error is None for r in records.values())
    times = {q["id"]: q["time_s"] for s in SAMPLES for q in s["queries"]}
    for qid, record in records.items():
        if qid != "a-q0":
            assert record.frame_times_s and max(record.frame_times_s) <= times[qid] + 1e-9
    assert records["a-q1"].response.startswith("A. 0") and records["a-q1"].parsed == "A"
    silent = records["a-q0"]  # the trigger never fired: no reply, no time, both sub-scores 0
    assert (silent.response, silent.response_time_s, silent.subscores) == (None, None, {"time": 0.0, "content": 0.0})
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    accuracy = {task: row["accuracy"] for task, row in summary["tasks"].items()}
    assert accuracy == {"realtime": 50.0, "clue": 0.0, "reasoning": 100.0, "sequential": 50.0, "proactive": 0.0}
    assert summary["overall"] == 40.0 and summary["n"] == len(EXPECTED)

    clue_only, *_ = compose_job(root, "dataset=dualstream", "scheduler=force_s1", "dataset.parts=[clue]")
    run_job(clue_only, run, shard, tmp_path / "clue")
    assert [r.query_id for r in store.read_job(tmp_path / "clue")] == ["a-q5"]
    assert list(json.loads((tmp_path / "clue" / "summary.json").read_text())["tasks"]) == ["clue"]


def test_the_synthetic_folder_is_read_by_dualstream_with_the_same_samples(tmp_path):
    synthetic = Synthetic(SyntheticConfig(root=str(tmp_path), videos=2, duration_s=20.0, seed=4))
    samples = synthetic.load()
    folder = synthetic.data_dir
    assert sorted(p.name for p in (folder / "shards").iterdir()) == ["shard-0000.json"]
    job, *_ = compose_job(folder, "dataset=dualstream")
    user = DATASETS.build(job.dataset)
    assert isinstance(user, DualStream) and user.load() == samples
    query = samples[0].queries[0]
    assert user.prompt(query) == synthetic.prompt(query) and user.tasks == synthetic.tasks
    now = DualStream(DualStreamConfig(root=str(folder), parts=["realtime"])).load()
    assert [q.id for s in now for q in s.queries] == [q.id for s in samples for q in s.queries if q.task == "realtime"]


def test_the_readme_example_is_a_valid_folder(tmp_path, video):
    text = (ROOT / "datasets" / "dualstream" / "README.md").read_text()
    blocks = re.findall(r"`([\w/.-]+\.json)`[^\n]*:\n\n```json\n(.*?)```", text, re.DOTALL)
    assert [name for name, _ in blocks] == ["all.json", "task_sets/sequential.json"]
    for name, body in blocks:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    (tmp_path / "videos").mkdir()
    shutil.copy(video, tmp_path / "videos" / "kitchen-01.mp4")
    bench = DualStream(DualStreamConfig(root=str(tmp_path)))
    (sample,) = bench.load()
    assert sorted(q.task for q in sample.queries) == sorted(
        ["proactive", "realtime", "sequential", "sequential", "reasoning", "clue"]
    )
    proactive, realtime = sample.queries[:2]
    assert bench.prompt(realtime).splitlines()[1:4] == ["A. a cup", "B. a knife", "C. a phone"]
    assert bench.parse(proactive, "Yes: two Cats just came in.") == "cat"
    assert bench.parse(proactive, "A square appeared") is None  # its own words replace the default ones
    assert bench.score(proactive, sample.truths[proactive.id], "cat", 8.0) == (1.0, {"time": 1.0, "content": 1.0})
    shutil.copytree(tmp_path / "task_sets", tmp_path / "copy" / "task_sets")
    (tmp_path / "copy" / "shards").mkdir()
    shutil.copy(tmp_path / "all.json", tmp_path / "copy" / "shards" / "shard-0000.json")
    (tmp_path / "copy" / "videos").symlink_to(tmp_path / "videos")
    assert [replace(s, video="") for s in read_folder(tmp_path / "copy")] == [replace(sample, video="")]


def test_conf_file_carries_every_field_with_its_default():
    conf = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "dataset" / "dualstream.yaml"))
    conf.pop("defaults")
    assert conf == {f.name: getattr(DualStreamConfig(), f.name) for f in fields(DualStreamConfig)}
