"""The synthetic benchmark: deterministic generation, a well-formed annotation, strict loading, scoring."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path

import av
import pytest
from omegaconf import OmegaConf

from harness.benchmarks.dualstream_format import read_folder
from harness.benchmarks.synthetic import TASKS, Synthetic, SyntheticConfig
from harness.errors import ConfigError, DataError
from harness.records import Query, Truth

SMALL = SyntheticConfig(videos=2, duration_s=40.0, seed=11)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    """A small benchmark, generated once for the module."""
    bench = Synthetic(replace(SMALL, root=str(tmp_path_factory.mktemp("synthetic"))))
    bench.load()
    return bench


@pytest.fixture(scope="module")
def samples(bench: Synthetic):
    return bench.load()


def test_same_seed_gives_same_files_and_other_seed_differs(bench, samples, tmp_path):
    again = Synthetic(replace(SMALL, root=str(tmp_path / "again")))
    again.load()
    assert again.data_dir.name == bench.data_dir.name
    assert (again.data_dir / "all.json").read_text() == (bench.data_dir / "all.json").read_text()
    for sample in samples:
        name = Path(sample.video).name
        assert (again.data_dir / "videos" / name).read_bytes() == Path(sample.video).read_bytes()
    other = Synthetic(replace(SMALL, seed=12, videos=1, root=str(tmp_path / "other")))
    other.load()
    assert other.data_dir.name != bench.data_dir.name
    first = json.loads((other.data_dir / "all.json").read_text())["samples"][0]
    assert first["objects"] != json.loads((bench.data_dir / "all.json").read_text())["samples"][0]["objects"]


def test_data_folder_is_named_by_knobs_not_by_name_or_root(bench):
    assert Synthetic(replace(bench.cfg, root="elsewhere")).data_dir.name == bench.data_dir.name
    assert Synthetic(replace(bench.cfg, object_size=30)).data_dir.name != bench.data_dir.name
    assert Synthetic(replace(bench.cfg, distractors=0)).data_dir.name != bench.data_dir.name


def test_layout_holds_annotation_shards_task_sets_and_videos(bench, samples):
    folder = bench.data_dir
    annotation = json.loads((folder / "all.json").read_text())
    assert annotation["benchmark"] == "synthetic" and annotation["spec"] == bench.spec
    assert json.loads((folder / "shards" / "shard-0000.json").read_text()) == annotation  # 2 samples: one shard
    assert sorted(p.name for p in (folder / "shards").iterdir()) == ["shard-0000.json"]
    for task in TASKS:
        grouped = json.loads((folder / "task_sets" / f"{task}.json").read_text())["samples"]
        assert grouped == {s.id: [q.id for q in s.queries if q.task == task] for s in samples}
    assert sorted(p.name for p in (folder / "videos").iterdir()) == ["syn-000.mp4", "syn-001.mp4"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_each_sample_has_every_family_in_the_planned_amounts(samples):
    assert len(samples) == 2
    for sample in samples:
        counts = Counter(q.task for q in sample.queries)
        assert set(counts) == set(TASKS)
        assert counts["realtime"] == 3 and counts["reasoning"] == 3 and counts["sequential"] == 2
        assert 1 <= counts["clue"] <= 2 and 1 <= counts["proactive"] <= 2
        assert len({q.text for q in sample.queries if q.task == "realtime"}) == 3


def test_queries_are_well_formed(samples):
    for sample in samples:
        times = [q.time_s for q in sample.queries]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert set(sample.truths) == {q.id for q in sample.queries}
        for q in sample.queries:
            truth = sample.truths[q.id]
            assert 4.0 <= q.time_s < sample.duration_s
            assert truth.evidence_s and len(truth.evidence_s) % 2 == 0
            if q.kind == "mcq":
                assert len(q.options) == 4 and len(set(q.options)) == 4
                assert truth.answer in "ABCD"[: len(q.options)]
            elif q.kind == "yes_no":
                assert truth.answer in ("yes", "no")
            else:
                start, end = truth.window_s
                assert q.time_s < start < end <= sample.duration_s
                assert q.trigger and truth.answer in ("circle", "square", "triangle", "star")
                assert truth.answer not in q.text + q.trigger


def test_sequential_pair_links_the_follow_up_to_an_earlier_question(samples):
    for sample in samples:
        first, second = [q for q in sample.queries if q.task == "sequential"]
        assert (first.kind, second.kind) == ("mcq", "yes_no")
        assert second.follows == first.id and second.time_s > first.time_s


def test_truth_is_not_reachable_from_a_query(samples):
    assert {f.name for f in fields(Query)}.isdisjoint({f.name for f in fields(Truth)} - {"query_id"} | {"answer"})
    for sample in samples:
        for q in sample.queries:
            assert not hasattr(q, "answer") and not hasattr(q, "window_s")


def test_object_ground_truth_is_kept_for_analysis(samples):
    for sample in samples:
        objects = sample.extras["objects"]
        assert len(objects) == SMALL.objects
        assert len({(o["colour"], o["shape"]) for o in objects}) == len(objects)
        assert all(0 <= o["appear_s"] < o["disappear_s"] <= sample.duration_s for o in objects)


def test_videos_decode_to_the_configured_size_and_duration(samples):
    for sample in samples:
        with av.open(sample.video) as container:
            stream = container.streams.video[0]
            frames = list(container.decode(stream))
        assert len(frames) == round(SMALL.duration_s * SMALL.fps)
        assert (frames[0].width, frames[0].height) == (SMALL.width, SMALL.height)
        assert float(frames[-1].time) == pytest.approx(SMALL.duration_s - 1 / SMALL.fps)
        assert float(stream.duration * stream.time_base) == pytest.approx(SMALL.duration_s)


def test_concurrent_first_loads_agree_and_leave_one_folder(tmp_path):
    cfg = SyntheticConfig(root=str(tmp_path), videos=1, duration_s=20.0, seed=5)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(Synthetic(cfg).load())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert [p.name for p in tmp_path.iterdir()] == [Synthetic(cfg).data_dir.name]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda q: q.update(time_s="abc"), "'time_s' must be a number, got 'abc'"),
        (lambda q: q.pop("kind"), "'kind' is missing"),
        (lambda q: q.update(answer="Z"), "'answer'"),
        (lambda q: q.update(follows="nope"), "'follows'"),
    ],
)
def test_malformed_query_names_file_sample_and_field(bench, tmp_path, edit, field):
    annotation = json.loads((bench.data_dir / "all.json").read_text())
    items = annotation["samples"][1]["queries"]
    index = next(i for i, q in enumerate(items) if q["kind"] == "mcq" and i > 0)  # an earlier one to follow
    edit(items[index])
    path = tmp_path / "all.json"
    path.write_text(json.dumps(annotation))
    with pytest.raises(DataError) as raised:
        read_folder(tmp_path)
    message = str(raised.value)
    assert str(path) in message and "sample 1 (id 'syn-001')" in message and f"query {index} (id " in message
    assert field in message


def test_unreadable_annotation_is_a_data_error(tmp_path):
    path = tmp_path / "all.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_folder(tmp_path)
    with pytest.raises(DataError, match="neither all.json nor shards"):
        read_folder(tmp_path / "missing")
    path.write_text(json.dumps({"benchmark": "b", "version": 1, "samples": [{"id": "s", "video": "v.mp4"}]}))
    with pytest.raises(DataError, match=r"sample 0 \(id 's'\): field 'duration_s' is missing"):
        read_folder(tmp_path)


def test_missing_video_is_not_checked_at_load(bench, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bench.data_dir, copy, ignore=shutil.ignore_patterns("*.mp4"))
    loaded = read_folder(copy)
    assert loaded[0].video.endswith("videos/syn-000.mp4") and not Path(loaded[0].video).exists()


def test_impossible_knobs_are_config_errors():
    with pytest.raises(ConfigError, match="objects"):
        Synthetic(SyntheticConfig(objects=25))
    with pytest.raises(ConfigError, match="duration_s"):
        Synthetic(SyntheticConfig(duration_s=5.0))


def test_prompt_lists_options_and_instruction(bench, samples):
    mcq = next(q for q in samples[0].queries if q.kind == "mcq")
    lines = bench.prompt(mcq).splitlines()
    assert lines[0] == mcq.text and lines[1] == f"A. {mcq.options[0]}" and lines[4] == f"D. {mcq.options[3]}"
    assert lines[5] == "Answer with the option's letter from the given choices directly."
    yes_no = next(q for q in samples[0].queries if q.kind == "yes_no")
    assert bench.prompt(yes_no) == f"{yes_no.text}\nAnswer yes or no."
    proactive = next(q for q in samples[0].queries if q.kind == "proactive")
    assert bench.prompt(proactive) == proactive.text


def test_parse_reads_letters_option_texts_and_words(bench):
    colours = Query(
        "q", 5.0, "What colour is the star on screen now?", "realtime", "mcq", ("blue", "red", "green", "cyan")
    )
    assert [bench.parse(colours, t) for t in ("B", "(C)", "D. cyan", "B) red", "It is red.", "A red star")] == [
        "B", "C", "D", "B", "B", "B"
    ]  # fmt: skip
    assert bench.parse(colours, "I cannot tell") is None
    yes_no = Query("y", 5.0, "Is it?", "sequential", "yes_no")
    assert (bench.parse(yes_no, "Yes, it is."), bench.parse(yes_no, "no"), bench.parse(yes_no, "maybe")) == (
        "yes", "no", None
    )  # fmt: skip
    proactive = Query("p", 5.0, "Tell me", "proactive", "proactive", trigger="Is a red object on screen now?")
    assert bench.parse(proactive, "A red Triangle appeared.") == "triangle"
    assert bench.parse(proactive, "Two stars!") == "star"
    assert bench.fired("Yes.") and not bench.fired("No, not yet") and not bench.fired("yesterday")


def test_score_mcq_and_proactive_time_and_content(bench):
    mcq = Query("q", 5.0, "x", "realtime", "mcq", ("a", "b", "c", "d"))
    assert bench.score(mcq, Truth("q", "C"), "C", None) == (1.0, {})
    assert bench.score(mcq, Truth("q", "C"), None, None) == (0.0, {})
    proactive = Query("p", 5.0, "x", "proactive", "proactive", trigger="t")
    truth = Truth("p", "star", window_s=(10.0, 13.0))
    assert bench.score(proactive, truth, "star", 13.0) == (1.0, {"time": 1.0, "content": 1.0})
    assert bench.score(proactive, truth, "star", 13.5) == (0.0, {"time": 0.0, "content": 1.0})
    assert bench.score(proactive, truth, "circle", 11.0) == (0.0, {"time": 1.0, "content": 0.0})
    assert bench.score(proactive, truth, None, None) == (0.0, {"time": 0.0, "content": 0.0})


def test_conf_file_carries_every_knob_with_its_default():
    conf = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "conf/dataset/synthetic.yaml"))
    conf.pop("defaults")
    assert conf == {f.name: getattr(SyntheticConfig(), f.name) for f in fields(SyntheticConfig)}
