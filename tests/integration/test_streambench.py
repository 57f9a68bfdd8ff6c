"""StreamBench adapter on a hand-written annotation: loading, layouts, errors, judge prompts, judged jobs."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from analysis.__main__ import main as analysis_main
from backends.base import BACKENDS
from harness.benchmarks.base import PromptsConfig
from harness.benchmarks.streambench import INSTRUCTION, StreamBench, StreamBenchConfig, official_table
from harness.errors import ConfigError, DataError
from harness.records import Request, Response, Truth, Turn
from harness.registry import Choice
from harness.runner import store
from harness.runner.job import run_job
from tests.fixtures.streambench_data import ENTRIES, write_streambench
from tests.helpers import compose_job

# what the judge answers to each question, and how it is read (yes, judge score) or None when unreadable
JUDGE = {
    "What is on the table?": ("{'llama_pred': 'yes', 'score': 4}", (1.0, 4.0)),
    "And what colour was it?": ("Sure. {'llama_pred': 'Yes, mostly', 'score': 5}", (1.0, 5.0)),
    "What did I pick up a moment ago?": ("{'llama_pred': 'no', 'score': 4.8}", (0.0, 4.0)),
    "What is a knife used for?": ("I cannot tell.", None),
    "Who enters the room?": ("{'llama_pred': 'no', 'score': '1'}", (0.0, 1.0)),
    "Where did the man first appear?": ("{'llama_pred': 'yes', 'score': 9}", None),  # out of 0..5
}
QUESTIONS = {f"Ego_ego_a_{i}": bp["question"] for i, bp in enumerate(ENTRIES[0]["breakpoint"])}
QUESTIONS |= {f"Movie_mov_b_{i}": bp["question"] for i, bp in enumerate(ENTRIES[1]["breakpoint"])}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_streambench(tmp_path_factory.mktemp("sb") / "streambench")


def test_load_reads_entries_in_list_order_with_int_times_and_a_dialogue_chain(data_root):
    bench = StreamBench(StreamBenchConfig(root=str(data_root)))
    ego, movie = bench.load()
    assert (ego.id, ego.video, ego.duration_s) == ("Ego_ego_a", str(data_root / "Ego" / "ego_a.mp4"), 12.0)
    assert (movie.id, movie.video) == ("Movie_mov_b", str(data_root / "Movie" / "Movie" / "mov_b.mp4"))
    assert (ego.extras["layout"], movie.extras["layout"]) == ("<class_1>", "<class_1>/<class_1>")
    assert [(q.id, q.time_s, q.task, q.kind) for q in ego.queries] == [
        ("Ego_ego_a_0", 3.0, "OS", "open"), ("Ego_ego_a_1", 6.0, "CI", "open"),  # int(6.7) = 6
        ("Ego_ego_a_2", 8.0, "SM", "open"), ("Ego_ego_a_3", 11.0, "KG", "open"),  # int("8") = 8
    ]  # fmt: skip
    assert [q.follows for q in ego.queries] == [None, "Ego_ego_a_0", "Ego_ego_a_1", "Ego_ego_a_2"]
    assert ego.truths["Ego_ego_a_2"].answer == "A knife."
    assert bench.tasks == ("OS", "LM", "SM", "CI", "KG", "XX")  # the codes found: known order, then others
    assert all("A knife" not in repr(q) for q in ego.queries)  # answers never reach a query
    assert bench.prompt(ego.queries[0]) == f"What is on the table?\n{INSTRUCTION}"
    assert bench.fired("yes") is False and bench.parse(ego.queries[0], " raw ") == " raw "


def test_history_off_and_a_class_subset(data_root):
    bench = StreamBench(StreamBenchConfig(root=str(data_root), tasks=["SM", "LM"], history=False))
    samples = bench.load()
    assert [[q.id for q in s.queries] for s in samples] == [["Ego_ego_a_2"], ["Movie_mov_b_1"]]
    assert all(q.follows is None for s in samples for q in s.queries) and bench.tasks == ("LM", "SM")
    with pytest.raises(ConfigError, match=r"tasks \['ZZ'\] are not classes of .*it has OS, LM, SM, CI, KG, XX"):
        StreamBench(StreamBenchConfig(root=str(data_root), tasks=["ZZ"])).load()


def test_missing_videos_keep_the_official_path_and_name_both_layouts(tmp_path, caplog):
    root = write_streambench(tmp_path / "sb", videos=False)
    with caplog.at_level(logging.WARNING):
        samples = StreamBench(StreamBenchConfig(root=str(root))).load()
    assert samples[1].video == str(root / "Movie" / "mov_b.mp4") and samples[1].extras["layout"] is None
    assert samples[1].duration_s == 9.0  # no video: the last question time
    assert "2 videos found in neither layout" in caplog.text and str(root / "Ego" / "Ego" / "ego_a.mp4") in caplog.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e[0]["info"].pop("class_1"), r"entry 0, info: field 'class_1' is missing"),
        (lambda e: e[1]["breakpoint"][0].update(time="soon"), r"entry 1 \(mov_b.mp4\), breakpoint\[0\]: field 'time'"),
        (lambda e: e[0]["breakpoint"][2].update(time=-1), r"breakpoint\[2\]: field 'time' must be >= 0"),
        (lambda e: e[0]["breakpoint"][1].update(answer=3), r"breakpoint\[1\]: field 'answer' must be str"),
        (lambda e: e[1].pop("breakpoint"), r"entry 1 \(mov_b.mp4\): field 'breakpoint' is missing"),
        (lambda e: e.append(json.loads(json.dumps(e[0]))), r"entries 0 and 2 are both Ego_ego_a"),
    ],
)
def test_malformed_entries_name_file_entry_and_field(tmp_path, change, message):
    entries = json.loads(json.dumps(ENTRIES))
    change(entries)
    root = write_streambench(tmp_path / "sb", entries, videos=False)
    with pytest.raises(DataError, match=message) as caught:
        StreamBench(StreamBenchConfig(root=str(root))).load()
    assert "streaming_bench_v0.3.json" in str(caught.value)


def test_missing_annotation_names_the_layout_and_the_readme(tmp_path):
    with pytest.raises(DataError, match=r"streaming_bench_v0\.3\.json: annotation file not found.*README"):
        StreamBench(StreamBenchConfig(root=str(tmp_path))).load()


OFFICIAL = """import torch
def main(args):
    for pred in contents:
        question, answer, prediction = pred["question"], pred["label"], pred["predict"]
        messages=[
            {"role": "system",
             "content":
                "You judge. "
                "------"
                "- Synonyms match.\\n"},
            {"role": "user",
             "content":
                "Evaluate:\\n\\n"
                f"Question: {question}\\n"
                f"Correct Answer: {answer}\\n"
                f"Predicted Answer: {prediction}\\n\\n"
                "For example: {'llama_pred': 'yes', 'score': 4.8}."}
        ]
        torch.cuda.empty_cache()  # never run: read with ast
"""


def test_judge_prompt_from_a_checkout_is_used_verbatim(tmp_path, data_root):
    (tmp_path / "eval_video_qa_with_llama3_ours.py").write_text(OFFICIAL)
    bench = StreamBench(StreamBenchConfig(root=str(data_root), prompts=PromptsConfig(str(tmp_path))))
    query = bench.load()[0].queries[0]
    [prompt] = bench.judge_prompts(query, Truth("q", "A red cup."), "A cup {red}.")
    assert prompt.key == "judgment" and prompt.system == "You judge. ------- Synonyms match.\n"
    assert prompt.user == (
        "Evaluate:\n\nQuestion: What is on the table?\nCorrect Answer: A red cup.\nPredicted Answer: A cup {red}.\n\n"
        "For example: {'llama_pred': 'yes', 'score': 4.8}."
    )
    own = StreamBench(StreamBenchConfig(root=str(data_root))).judge_prompts(query, Truth("q", "A red cup."), "A cup.")[
        0
    ]
    assert "Question: What is on the table?\nCorrect Answer: A red cup.\nPredicted Answer: A cup." in own.user
    assert "'llama_pred'" in own.user and "'score'" in own.user and own.system
    (tmp_path / "eval_video_qa_with_llama3_ours.py").write_text(OFFICIAL.replace("{answer}", "{pred['label']}"))
    with pytest.raises(ConfigError, match=r"the f-string field \{pred\['label'\]\} is not one we can fill"):
        StreamBench(StreamBenchConfig(prompts=PromptsConfig(str(tmp_path))))
    with pytest.raises(ConfigError, match=r"no .*eval_video_qa_with_llama3_ours\.py; point official_dir"):
        StreamBench(StreamBenchConfig(prompts=PromptsConfig(str(tmp_path / "nowhere"))))


@dataclass(frozen=True)
class AnswerConfig:
    name: str = "sb_answers"


@BACKENDS.register("sb_answers", AnswerConfig)
class Answers:
    """Says how many earlier turns it was given; keeps every request."""

    requests: list[Request] = []

    def __init__(self, cfg: AnswerConfig) -> None:
        self.cfg = cfg

    async def generate(self, request: Request) -> Response:
        Answers.requests.append(request)
        return Response(f"I was given {len(request.history)} earlier turns.", tokens_in=1, tokens_out=1)

    async def aclose(self) -> None:
        pass


@dataclass(frozen=True)
class JudgeConfig:
    name: str = "sb_judge"


@BACKENDS.register("sb_judge", JudgeConfig)
class Judge:
    """The fixed judge output of each question (`JUDGE`); keeps every request."""

    requests: list[Request] = []

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg

    async def generate(self, request: Request) -> Response:
        Judge.requests.append(request)
        question = re.search(r"Question: (.*)\n", request.prompt).group(1)
        return Response(JUDGE[question][0])

    async def aclose(self) -> None:
        pass


def _job(data_root: Path, tmp_path: Path, *overrides: str):
    job, run, shard = compose_job(data_root, "dataset=streambench", "judge=llm", "scheduler=force_s2", *overrides)
    job = dataclasses.replace(
        job,
        backend=Choice("backend", "sb_answers", AnswerConfig()),
        judge=dataclasses.replace(job.judge, backend={"name": "sb_judge"}),
    )
    return job, dataclasses.replace(run, judge_cache=str(tmp_path / "judgments.sqlite")), shard


def test_judged_job_records_outputs_scores_and_the_systems_own_history(data_root, tmp_path, capsys):
    Answers.requests.clear()
    Judge.requests.clear()
    result = run_job(*_job(data_root, tmp_path), tmp_path / "job")
    records = {r.query_id: r for r in store.read_job(tmp_path / "job")}
    assert set(records) == set(QUESTIONS) and result.new == 6
    for query_id, record in records.items():
        output, reading = JUDGE[QUESTIONS[query_id]]
        assert record.error is None and record.judge_outputs == {"judgment": output}
        assert (record.score, dict(record.subscores)) == (
            (reading[0], {"judge_score": reading[1]}) if reading else (0.0, {})
        )
        assert record.judge_failed == (() if reading else ("judgment",))
        assert max(record.frame_times_s) <= record.time_s
    # each question carries the chain of earlier (prompt, own answer) turns of its video
    asked = {r.prompt.split("\n")[0]: r for r in Answers.requests}
    third = asked["What did I pick up a moment ago?"].history
    assert third == (
        Turn(f"What is on the table?\n{INSTRUCTION}", "I was given 0 earlier turns."),
        Turn(f"And what colour was it?\n{INSTRUCTION}", "I was given 1 earlier turns."),
    )
    assert len(asked["Where did the man first appear?"].history) == 1 and not asked["Who enters the room?"].history
    assert len(Judge.requests) == 6 and all(not r.frames and r.system for r in Judge.requests)
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert (manifest["judge_calls"], manifest["judge_cached"]) == (6, 0)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["judge_failed"] == 2

    table = official_table(records.values())  # OS yes 4, CI yes 5, SM no 4, XX no 1; KG and LM unreadable
    assert table.tasks == {"OS": 100.0, "SM": 0.0, "CI": 100.0, "XX": 0.0}
    assert table.overall == 50.0 and table.categories["score"] == 3.5
    capsys.readouterr()
    assert analysis_main(["score", "--benchmark", "streambench", "--run", str(tmp_path / "job"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == table.flat()

    run_job(*_job(data_root, tmp_path), tmp_path / "job")  # everything recorded: neither model nor judge called
    assert len(Answers.requests) == 6 and len(Judge.requests) == 6
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert (manifest["reused"], manifest["new"], manifest["judge_calls"]) == (6, 0, 0)

    run_job(*_job(data_root, tmp_path), tmp_path / "again")  # same answers, same judge prompts: from the cache
    assert len(Answers.requests) == 12 and len(Judge.requests) == 6
    manifest = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert (manifest["judge_calls"], manifest["judge_cached"]) == (0, 6)
    again = {r.query_id: (r.score, r.judge_outputs) for r in store.read_job(tmp_path / "again")}
    assert again == {q: (r.score, r.judge_outputs) for q, r in records.items()}


def test_history_off_asks_every_question_alone(data_root, tmp_path):
    Answers.requests.clear()
    run_job(*_job(data_root, tmp_path, "dataset.history=false"), tmp_path / "job")
    assert len(Answers.requests) == 6 and all(not r.history for r in Answers.requests)


def test_unanswered_questions_are_error_records_that_no_judge_sees(data_root, tmp_path):
    Judge.requests.clear()
    job, run, shard = _job(data_root, tmp_path)  # the reference backend knows only the synthetic grammar
    run_job(dataclasses.replace(job, backend=BACKENDS.parse({"name": "reference"})), run, shard, tmp_path / "job")
    records = list(store.read_job(tmp_path / "job"))
    assert len(records) == 6 and all("not in the synthetic grammar" in r.error for r in records)
    assert all(r.score is None and not r.judge_outputs and not r.judge_failed for r in records)
    assert not Judge.requests
    table = official_table(records)
    assert table.tasks == {} and "0 answers with an unreadable judgment and 6 unanswered" in table.notes[1]


def test_missing_video_fails_before_any_work_or_is_skipped(tmp_path):
    root = write_streambench(tmp_path / "sb")
    shutil.rmtree(root / "Movie")
    with pytest.raises(DataError, match=r"(?s)Movie/mov_b.mp4 \(sample Movie_mov_b\): missing.*on_bad_item=skip"):
        run_job(*_job(root, tmp_path), tmp_path / "job")
    run_job(*_job(root, tmp_path, "dataset.on_bad_item=skip"), tmp_path / "skip")
    assert {r.sample_id for r in store.read_job(tmp_path / "skip")} == {"Ego_ego_a"}


@pytest.mark.parametrize("dataset", ["streambench", "cogstream"])
def test_a_judged_dataset_without_a_judge_fails_at_load_with_the_fix(dataset, tmp_path):
    with pytest.raises(ConfigError, match=rf"dataset={dataset} is scored by an LLM judge.*judge=llm backend@judge"):
        compose_job(tmp_path, f"dataset={dataset}")
