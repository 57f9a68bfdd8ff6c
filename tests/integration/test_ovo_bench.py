"""OVO-Bench adapter on a hand-written annotation: loading, errors, prompts, official scoring, a job, export."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from analysis.__main__ import main as analysis_main
from backends.base import BACKENDS
from harness.benchmarks.base import BadItem, PromptsConfig
from harness.benchmarks.ovo_bench import OVOBench, OVOBenchConfig, read_templates, to_official_results
from harness.benchmarks.ovo_bench_scoring import score_predictions
from harness.config import Scoring, load_job, register
from harness.errors import ConfigError, DataError
from harness.records import Query, Request, Response, Truth
from harness.registry import Choice
from harness.runner import store
from harness.runner.job import run_job
from tests.fixtures.ovo_bench_data import ITEMS, write_ovo_bench
from tests.helpers import CONF

# what the fixed backend answers, and the official score of each query under it (worked out by hand)
EXPECTED = {
    "0": 0.0, "1": 0.0, "3": 0.0,  # gt C, A, E: "B" contains none of them
    "4": 1.0, "5": 1.0,  # gt B
    "2_0": 0.0, "2_1": 0.0, "2_2": 0.0, "2_3": 1.0,  # counts 1, 1, 2, 3 against "3"
    "6_0": 1.0, "6_1": 0.0, "6_2": 1.0,  # types 1, 0, 1 against "Yes"
    "7_0": 0.0, "7_1": 0.0, "7_2": 1.0, "7_3": 1.0, "7_4": 1.0,  # types 0, 0, 1, 1, 1
}  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_ovo_bench(tmp_path_factory.mktemp("ovo") / "ovo_bench")


@pytest.fixture(scope="module")
def bench(data_root) -> OVOBench:
    return OVOBench(OVOBenchConfig(root=str(data_root)))


def _queries(bench: OVOBench) -> dict[str, tuple[Query, Truth]]:
    return {q.id: (q, s.truths[q.id]) for s in bench.load() for q in s.queries}


def test_load_builds_one_stream_per_video_with_official_ids_times_and_truths(bench, data_root):
    samples = bench.load()
    assert [(s.id, s.duration_s) for s in samples] == [("Ego4D_clips_a1.mp4", 20.0), ("COIN_b1.mp4", 18.5)]
    assert samples[1].video == str(data_root / "src_videos" / "COIN" / "b1.mp4")
    for sample in samples:
        assert [q.time_s for q in sample.queries] == sorted(q.time_s for q in sample.queries)
    queries = _queries(bench)
    assert set(queries) == set(EXPECTED)
    kinds = {qid: (q.task, q.kind, t.answer) for qid, (q, t) in queries.items()}
    assert kinds["0"] == ("EPM", "mcq", "C") and kinds["3"] == ("HLD", "mcq", "E") and kinds["1"][2] == "A"
    assert [kinds[f"2_{i}"] for i in range(4)] == [("REC", "count", c) for c in ("1", "1", "2", "3")]
    assert [kinds[f"6_{i}"][2] for i in range(3)] == ["Yes", "No", "Yes"]
    assert [kinds[f"7_{i}"] for i in range(5)] == [("CRR", "yes_no", a) for a in ("No", "No", "Yes", "Yes", "Yes")]
    # clip end: ceil of the time, capped at the video's duration (18.2 -> 19 -> 18.5)
    ends = {qid: q.clip_end_s for qid, (q, _) in queries.items()}
    assert (ends["0"], ends["1"], ends["4"], ends["2_1"], ends["5"]) == (5.0, 8.0, 4.0, 10.0, 18.5)
    assert queries["2_3"][0].text == "How many times did they clap their hands?"
    assert queries["6_1"][0].text == "cut the bread" and queries["4"][0].options[1] == "spread the butter"
    for query, truth in queries.values():
        shown = repr(query)
        assert f"'{truth.answer}'" not in shown or query.kind == "mcq"  # an option letter is not an option
        assert "on the shelf" not in shown and "'red'" not in shown  # free-text answers never reach a query


def test_missing_videos_fall_back_to_the_last_query_time_and_tasks_filter(tmp_path):
    root = write_ovo_bench(tmp_path / "ovo", videos=False)
    samples = OVOBench(OVOBenchConfig(root=str(root), tasks=["STU", "CRR"])).load()
    assert [s.id for s in samples] == ["COIN_b1.mp4"]
    assert samples[0].duration_s == 18.2
    assert {q.id: q.clip_end_s for q in samples[0].queries}["5"] == 18.2
    assert {q.task for q in samples[0].queries} == {"STU", "CRR"}
    with pytest.raises(ConfigError, match="XYZ"):
        OVOBench(OVOBenchConfig(root=str(root), tasks=["XYZ"]))


@pytest.mark.parametrize(
    ("index", "change", "message"),
    [
        (1, {"gt": 3}, r"item 1 \(id 1\): field 'gt' must index one of the 3 options"),
        (0, {"realtime": "5"}, r"item 0 \(id 0\): field 'realtime' must be a number"),
        (4, {"options": ["only one"]}, r"item 4 \(id 4\): field 'options' must be a list of 2 to 26"),
        (3, {"task": "XYZ"}, r"item 3 \(id 3\): field 'task' must be one of"),
        (2, {"test_info": [{"realtime": 4, "count": "1"}]}, r"item 2 \(id 2\), test_info\[0\]: field 'count'"),
        (6, {"test_info": [{"realtime": 5, "type": 1}]}, r"item 6 \(id 6\), test_info\[0\]: field 'step' is missing"),
        (
            7,
            {"test_info": [{"realtime": 2, "type": 2}]},
            r"item 7 \(id 7\), test_info\[0\]: field 'type' must be 0 or 1",
        ),
        (7, {"id": True}, r"item 7: field 'id' must be int"),
        (5, {"id": 4}, r"item 5 \(id 4\): field 'id' repeats 4"),
    ],
)
def test_malformed_items_name_file_item_id_and_field(tmp_path, index, change, message):
    items = [dict(item) for item in ITEMS]
    items[index].update(change)
    root = write_ovo_bench(tmp_path / "ovo", items, videos=False)
    with pytest.raises(DataError, match=message) as caught:
        OVOBench(OVOBenchConfig(root=str(root))).load()
    assert "ovo_bench_new.json" in str(caught.value)


def test_missing_annotation_names_the_layout_and_the_readme(tmp_path):
    with pytest.raises(DataError, match=r"ovo_bench_new\.json: annotation file not found.*src_videos.*README"):
        OVOBench(OVOBenchConfig(root=str(tmp_path))).load()


def test_own_prompts_follow_the_official_structure(bench):
    queries = _queries(bench)
    mcq = bench.prompt(queries["1"][0])
    lines = mcq.split("\n")
    assert lines[:4] == ["", "Question: What does the sign say?", "Options:", "A. EXIT; B. OPEN; C. STOP;"]
    assert lines[4] == "" and "letter" in lines[5]
    assert "How many times did they clap their hands?" in bench.prompt(queries["2_0"][0])
    assert "\ncut the bread\n" in bench.prompt(queries["6_1"][0])
    assert "\nWhat colour is the car that arrives?\n" in bench.prompt(queries["7_0"][0])
    assert bench.fired("Yes") is False and bench.parse(queries["0"][0], " B.\n") == " B.\n"


def test_prompts_from_a_constant_py_are_used_verbatim(tmp_path, data_root):
    constant = tmp_path / "OVO-Bench" / "constant.py"
    constant.parent.mkdir()
    constant.write_text(
        'import os\nBACKWARD_TASKS = ["EPM"]\nos.system("exit 1")  # never run: read with ast\n'
        'BR_PROMPT_TEMPLATE = """\nQuestion: {}\nOptions:\n{}\n\nRespond with “A”.\n"""\n'
        "REC_PROMPT_TEMPLATE = 'Count: {}…'\n"
        'SSR_PROMPT_TEMPLATE = "Step:\\n{}\\nYes/No"\n'
        "CRR_PROMPT_TEMPLATE = 'Q {question} enough?'\n"  # named placeholders are filled too
    )
    assert read_templates(constant)["REC_PROMPT_TEMPLATE"] == "Count: {}…"
    bench = OVOBench(OVOBenchConfig(root=str(data_root), prompts=PromptsConfig(str(constant.parent))))
    queries = _queries(bench)
    assert bench.prompt(queries["4"][0]) == (
        "\nQuestion: Which step comes next?\nOptions:\nA. cut the bread; B. spread the butter; C. wash the knife;"
        "\n\nRespond with “A”.\n"
    )
    assert bench.prompt(queries["2_1"][0]) == "Count: How many times did they clap their hands?…"
    assert bench.prompt(queries["6_2"][0]) == "Step:\nspread the butter\nYes/No"
    assert bench.prompt(queries["7_3"][0]) == "Q What colour is the car that arrives? enough?"
    constant.write_text("BR_PROMPT_TEMPLATE = 'x'\nREC_PROMPT_TEMPLATE = f'{1}'\n")
    with pytest.raises(ConfigError, match="REC_PROMPT_TEMPLATE must be a string literal"):
        read_templates(constant)
    constant.write_text("BR_PROMPT_TEMPLATE = 'x'\n")
    with pytest.raises(ConfigError, match="no string constant REC_PROMPT_TEMPLATE, SSR_PROMPT_TEMPLATE"):
        read_templates(constant)


@pytest.mark.parametrize(
    ("qid", "response", "score"),
    [
        ("0", "C", 1.0), ("0", "(C)", 1.0), ("0", "c", 0.0), ("1", "Answer: C", 1.0),  # substring: capital A
        ("0", None, 0.0), ("2_3", "3 times", 1.0), ("2_2", "1, 2", 0.0), ("2_2", "two", 0.0),
        ("2_1", "1", 1.0), ("6_0", "yes", 0.0), ("6_0", "Y", 1.0), ("6_1", "Not sure", 1.0),
        ("7_0", "N", 1.0), ("7_2", "N", 0.0), ("7_2", "Yes.", 1.0),
    ],
)  # fmt: skip
def test_score_follows_the_official_quirks(bench, qid, response, score):
    query, truth = _queries(bench)[qid]
    assert bench.score(query, truth, response, None)[0] == score


@dataclass(frozen=True)
class FixedConfig:
    name: str = "ovo_fixed"


@BACKENDS.register("ovo_fixed", FixedConfig)
class Fixed:
    """Answers "B" to option questions, "3" to counts and "Yes" otherwise; keeps every request."""

    requests: list[Request] = []

    def __init__(self, cfg: FixedConfig) -> None:
        self.cfg = cfg

    async def generate(self, request: Request) -> Response:
        Fixed.requests.append(request)
        text = "B" if "Options:" in request.prompt else "3" if "single number" in request.prompt else "Yes"
        return Response(text, tokens_in=1, tokens_out=1)

    async def aclose(self) -> None:
        pass


def _job(data_root: Path):
    register()
    overrides = ["dataset=ovo_bench", f"dataset.root={data_root}", "scheduler=force_s2", "router=uniform"]
    overrides += ["memory=window", "system.span=official", "run.progress=false"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        job, run, shard = load_job(compose("config", overrides=overrides))
    return dataclasses.replace(job, backend=Choice("backend", "ovo_fixed", FixedConfig())), run, shard


def test_job_records_score_like_the_official_scorer_of_the_export(data_root, tmp_path, monkeypatch):
    Fixed.requests.clear()
    job, run, shard = _job(data_root)
    result = run_job(job, dataclasses.replace(run, scoring=Scoring.robust), shard, tmp_path / "job")
    records = {r.query_id: r for r in store.read_job(tmp_path / "job")}
    assert {qid: r.score for qid, r in records.items()} == EXPECTED
    # scoring=robust: the stricter parser beside the official number, in its own column
    assert {qid: r.subscores["robust"] for qid, r in records.items()} == EXPECTED  # "B", "3", "Yes" read alike
    assert result.summary["overall_robust"] == pytest.approx(result.summary["overall"])
    assert "| overall robust |" in (tmp_path / "job" / "summary.md").read_text().replace("  ", "")
    assert len(Fixed.requests) == len(EXPECTED)  # one stateless call per MCQ item and per probe
    assert all(not request.history for request in Fixed.requests)
    ends = {q.id: q.clip_end_s for q, _ in _queries(OVOBench(OVOBenchConfig(root=str(data_root)))).values()}
    for qid, record in records.items():
        assert record.error is None and max(record.frame_times_s) <= ends[qid] + 1e-6
    assert max(records["1"].frame_times_s) > 7.25  # the official span: up to ceil(7.25) = 8 s

    monkeypatch.chdir(tmp_path)  # a relative output path, as a user types it
    assert analysis_main(["export", "--benchmark", "ovo_bench", str(tmp_path / "job"), "-o", "out/ovo.json"]) == 0
    exported = json.loads((tmp_path / "out" / "ovo.json").read_text())
    assert [r["id"] for r in exported["backward"]] == [0, 3, 4] and [r["id"] for r in exported["realtime"]] == [1, 5]
    assert exported["backward"][0] == {
        "id": 0, "video": "Ego4D/clips/a1.mp4", "task": "EPM", "question": "Where did I put the cup?",
        "response": "B", "ground_truth": "C",
    }  # fmt: skip
    rec = exported["forward"][0]
    assert rec == {**ITEMS[2], "test_info": [{**p, "response": "3"} for p in ITEMS[2]["test_info"]]}
    table = score_predictions(tmp_path / "out" / "ovo.json")
    for task in ("EPM", "ASI", "HLD", "OCR", "STU", "REC", "SSR", "CRR"):
        mine = [r.score for r in records.values() if r.task == task]
        assert table.tasks[task] == pytest.approx(100 * sum(mine) / len(mine))
        assert table.counts[task] == len(mine)
    assert table.overall == pytest.approx(100 * (2 / 6 + 1 / 2 + (1 / 4 + 2 / 3 + 3 / 5) / 3) / 3)


def test_bad_items_stop_the_job_or_are_skipped_and_export_as_null(tmp_path):
    root = write_ovo_bench(tmp_path / "ovo")
    shutil.rmtree(root / "src_videos" / "COIN")
    job, run, shard = _job(root)
    with pytest.raises(DataError, match=r"(?s)COIN/b1.mp4 \(sample COIN_b1.mp4\): missing.*on_bad_item=skip"):
        run_job(job, run, shard, tmp_path / "job")
    assert not list((tmp_path / "job").rglob("*.jsonl"))  # stopped before any work
    skip = dataclasses.replace(job.dataset.config, on_bad_item=BadItem.skip)
    run_job(dataclasses.replace(job, dataset=Choice("dataset", "ovo_bench", skip)), run, shard, tmp_path / "job2")
    manifest = json.loads((tmp_path / "job2" / "manifest.json").read_text())
    assert [(p["sample"], p["query"]) for p in manifest["skipped"]] == [("COIN_b1.mp4", None)]
    records = {r.query_id: r for r in store.read_job(tmp_path / "job2")}
    assert set(records) == {"0", "1", "2_0", "2_1", "2_2", "2_3", "3"}  # the Ego4D video's queries only
    records["0"] = dataclasses.replace(records["0"], response=None, score=None, error="BackendError: timeout")
    samples = OVOBench(OVOBenchConfig(root=str(root))).load()
    results = to_official_results(samples, records.values())
    assert [r["response"] for r in results["backward"]] == [None, "B", None]  # ids 0 (error), 3, 4 (skipped)
    assert [p["response"] for p in results["forward"][2]["test_info"]] == [None] * 5
    unanswered = to_official_results(samples, [])  # no record at all: null too
    assert all(r["response"] is None for r in unanswered["backward"] + unanswered["realtime"])
    path = tmp_path / "ovo.json"
    path.write_text(json.dumps(results))
    assert score_predictions(path).tasks["SSR"] == 0.0 and math.isclose(score_predictions(path).tasks["EPM"], 0.0)


def test_robust_subscore_reads_what_the_official_rules_misread(bench):
    queries = _queries(bench)
    assert bench.score(*queries["1"], "Answer: B", None) == (1.0, {"robust": 0.0})  # gt A: the "A" of "Answer"
    assert bench.score(*queries["2_0"], "1 time, then 2 more", None) == (0.0, {"robust": 1.0})  # digits "12"
    assert bench.score(*queries["6_1"], "no", None) == (0.0, {"robust": 1.0})  # type 0: "No" is case-sensitive
