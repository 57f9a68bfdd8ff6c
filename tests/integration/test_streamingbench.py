"""StreamingBench adapter on hand-written question files: loading, spans, prompts, errors, official templates,
official scoring, a job under the official span with its export re-scored by the official scorer, and a job
with the reference backend."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from analysis.__main__ import main as analysis_main
from backends.base import BACKENDS
from harness.benchmarks.base import PromptsConfig
from harness.benchmarks.streamingbench import (
    PUBLISHED_COUNTS,
    StreamingBench,
    StreamingBenchConfig,
    to_official_results,
)
from harness.benchmarks.streamingbench_prompts import OWN_TEMPLATES, check_templates, read_templates
from harness.benchmarks.streamingbench_scoring import score_predictions
from harness.benchmarks.validate import check_samples, validate
from harness.errors import ConfigError, DataError
from harness.records import RECORD_SCHEMA, Query, Request, Response, ResultRecord, Truth
from harness.registry import Choice
from harness.runner import store
from harness.runner.job import run_job
from tests.fixtures.streamingbench_data import FILES, write_streamingbench
from tests.helpers import compose_job

MCQ_IDS = ["real-0-0", "real-0-1", "real-1-0", "real-1-1", "real-2-0", "omni-0-0", "omni-1-0", "omni-2-0"]
MCQ_IDS += ["sqa-0-0-0", "sqa-0-1-0", "sqa-0-1-1", "sqa-1-0-0"]
PO_IDS = ["proactive-0-0", "proactive-0-1", "proactive-1-0", "proactive-2-0"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_streamingbench(tmp_path_factory.mktemp("sb") / "data")


@pytest.fixture(scope="module")
def bench(data_root) -> StreamingBench:
    return StreamingBench(StreamingBenchConfig(root=str(data_root)))


def _queries(bench: StreamingBench) -> dict[str, tuple[Query, Truth]]:
    return {q.id: (q, s.truths[q.id]) for s in bench.load() for q in s.queries}


def test_load_builds_one_stream_per_video_with_official_ids_times_spans_and_truths(bench, data_root):
    samples = {s.id: s for s in bench.load()}
    assert {sid: s.duration_s for sid, s in samples.items()} == {
        "real-sample_1_real": 70.0, "omni-sample_2_omni": 30.0, "sqa-sample_3_sqa": 40.0, "sqa-sample_4_sqa": 20.0,
        "proactive-sample_5_proactive": 30.0,
    }  # fmt: skip
    assert samples["sqa-sample_4_sqa"].video == str(data_root / "videos" / "sample_4_sqa.mp4")  # beside the file
    queries = _queries(bench)
    assert sorted(queries) == sorted(MCQ_IDS + PO_IDS)
    for sample in samples.values():
        assert [q.time_s for q in sample.queries] == sorted(q.time_s for q in sample.queries)
    spans = {qid: (q.task, q.time_s, q.clip_start_s, q.clip_end_s) for qid, (q, _) in queries.items()}
    assert spans["real-1-0"] == ("CT", 24.0, 0.0, 24.0)  # "00:24": two parts, as the official code sums them
    assert spans["real-2-0"] == ("EU", 8.0, 0.0, 8.0)  # "00:00:8"
    assert spans["real-1-1"] == ("CS", 65.0, 5.0, 65.0)  # "00:01:05" with 60 s of context: [5, 65]
    assert spans["omni-2-0"] == ("ACU", 28.0, 0.0, 28.0) and spans["sqa-1-0-0"][0] == "SQA"
    assert {qid: t.answer for qid, (_, t) in queries.items() if qid.startswith("sqa")} == {
        "sqa-0-0-0": "A", "sqa-0-1-0": "A", "sqa-0-1-1": "C", "sqa-1-0-0": "A"
    }  # fmt: skip
    po, truth = queries["proactive-0-0"]
    assert (po.kind, po.task, po.time_s, po.clip_start_s, po.clip_end_s) == ("proactive", "PO", 5.0, 5.0, None)
    assert po.poll_window_s == (6.0, 16.0)  # time_stamp + 1 .. ground truth (12) + 4
    assert po.text == "Tell me when a green object appears, and name its shape."
    assert (truth.answer, truth.evidence_s, truth.window_s) == ("green circle", (12.0,), (10.0, 14.0))
    assert "green circle" in po.trigger and po.trigger.count("Tell me when a green object appears") == 1
    for query, truth in queries.values():  # nothing a system is handed names the answer
        assert query.kind == "proactive" or f"'{truth.answer}'" not in repr(query)
        assert query.follows is None  # SQA's context holds ground-truth answers, not the system's own


def test_all_context_parts_tasks_and_video_folders(data_root, tmp_path):
    everything = StreamingBench(StreamingBenchConfig(root=str(data_root), context_s=-1))
    assert {q.id: q.clip_start_s for q, _ in _queries(everything).values()}["real-1-1"] == 0.0  # [0, t]
    some = StreamingBench(StreamingBenchConfig(root=str(data_root), parts=["proactive", "real"], tasks=["PO", "CS"]))
    assert some.tasks == ("CS", "PO") and sorted(_queries(some)) == [*PO_IDS, "real-1-1"]
    elsewhere = write_streamingbench(tmp_path / "data", videos=False)
    real = copy.deepcopy(FILES["questions_real.json"])
    for entry in real:  # absolute paths (what the official modify_video_path.py writes) are kept
        entry["video_path"] = str(data_root / "videos" / "sample_1_real.mp4")
    (elsewhere / "questions_real.json").write_text(json.dumps(real))
    moved = StreamingBench(StreamingBenchConfig(root=str(elsewhere), videos="clips", parts=["real", "omni"]))
    assert {s.id: s.video for s in moved.load()} == {
        "real-sample_1_real": str(data_root / "videos" / "sample_1_real.mp4"),
        "omni-sample_2_omni": str(elsewhere / "clips" / "sample_2_omni.mp4"),  # <root>/<videos>/<file name>
    }
    real[1]["video_path"] = "./videos/other/sample_1_real.mp4"  # another file with the same name: ids collide
    (elsewhere / "questions_real.json").write_text(json.dumps(real))
    with pytest.raises(DataError, match="share the id real-sample_1_real"):
        StreamingBench(StreamingBenchConfig(root=str(elsewhere), parts=["real"])).load()
    for key, value, message in [
        ("parts", ["live"], r"dataset.parts=\['live'\]: unknown"),
        ("tasks", ["XYZ"], r"dataset.tasks=\['XYZ'\]: unknown"),
        ("context_s", 0.0, "dataset.context_s=0.0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            StreamingBench(StreamingBenchConfig(root=str(data_root), **{key: value}))
    with pytest.raises(ConfigError, match="none is in the parts"):
        StreamingBench(StreamingBenchConfig(root=str(data_root), parts=["sqa"], tasks=["PO"]))


def test_own_prompts_follow_the_official_structure(bench):
    queries = _queries(bench)
    lines = bench.prompt(queries["omni-1-0"][0]).split("\n")
    assert lines[2:] == ["Question: What shape is the magenta object on screen now?", "", "Options:", "A. star",
                         "B. circle", "C. square", "D. triangle", "", "The best option is:"]  # fmt: skip
    assert "letter" in lines[0] and lines[1] == ""  # the instruction; the stray items "E. ." etc. are not shown
    assert queries["omni-1-0"][0].options == ("A. star", "B. circle", "C. square", "D. triangle")
    first = bench.prompt(queries["sqa-0-0-0"][0])  # unprefixed options get "A. ".."D. "; no context yet
    assert "\nA. 1\nB. 2\nC. 3\nD. 0\n\nThe best option is:" in first and "Answer:" not in first
    third = bench.prompt(queries["sqa-0-1-1"][0])
    context = third[third.index("Notes:") : third.index("\n\nThe new question")]
    assert context == (
        "Notes: questions asked earlier about this video, each with its correct answer. "
        "At 00:00:10 this was asked: Question: How many red objects have appeared so far?; "
        "Options: A. 1, B. 2, C. 3, D. 0; Answer: A; "
        "At 00:00:30 this was asked: Question: What shape is the cyan object on screen now?; "
        "Options: A. circle, B. square, C. star, D. triangle; Answer: A; "
    )  # ground-truth answers, in file order
    assert third.endswith("Question: What shape was the red object that appeared earlier in the video?\n\nOptions:\n"
                          "A. triangle\nB. star\nC. square\nD. circle\n\nThe best option is:")  # fmt: skip
    assert "Notes:" not in bench.prompt(queries["sqa-1-0-0"][0])  # the next video starts afresh
    po = queries["proactive-0-0"][0]
    bare = "Question: Tell me when a green object appears, and name its shape."
    assert bench.prompt(po).endswith(f"\n\n{bare}\n\nThe answer is:\n")
    assert f'\n\n{bare} Has the moment come to output "green circle"? Reply with yes or no only.\n' in po.trigger
    assert all(bench.fired(text) for text in ("Yes.", " YES", "eyes"))  # "yes" anywhere, as the official test
    assert not any(bench.fired(text) for text in ("No", "not yet", ""))
    assert bench.parse(po, " B.\n") == " B.\n"
    check_templates(OWN_TEMPLATES, "built-in")


def _break(change) -> dict[str, Any]:
    files = copy.deepcopy(FILES)
    change(files)
    return files


@pytest.mark.parametrize(
    ("change", "file", "message"),
    [
        (lambda f: f["questions_real.json"][1]["questions"][0].update(time_stamp="0a:10"), "questions_real.json",
         r"entry 1, question 0: field 'time_stamp' must be a time stamp like 00:03:10, got '0a:10'"),
        (lambda f: f["questions_omni.json"][0]["questions"][0].update(options=["A. x", "B. y", "C. z"]),
         "questions_omni.json", r"entry 0, question 0: field 'options' must be a list of at least 4 strings"),
        (lambda f: f["questions_real.json"][0]["questions"][1].update(answer="E"), "questions_real.json",
         r"entry 0, question 1: field 'answer' must be one of the letters A, B, C, D, got 'E'"),
        (lambda f: f["questions_sqa.json"][1][0]["questions"][0].update(task_type="Counting"), "questions_sqa.json",
         r"video 1, entry 0, question 0: field 'task_type' must be a task of the sqa file"),
        (lambda f: f["questions_proactive_50.json"][1]["questions"][0].pop("ground_truth_output"),
         "questions_proactive_50.json", r"entry 1, question 0: field 'ground_truth_output' is missing"),
        (lambda f: f["questions_proactive_50.json"][2]["questions"][0].update(ground_truth_time_stamp="00:00:05"),
         "questions_proactive_50.json", r"entry 2, question 0: field 'ground_truth_time_stamp' \(5 s\) lies too far"),
        (lambda f: f["questions_real.json"][2].pop("video_path"), "questions_real.json",
         r"entry 2: field 'video_path' is missing"),
        (lambda f: f.update({"questions_sqa.json": f["questions_sqa.json"][0]}), "questions_sqa.json",
         r"video 0: must be a list of entries"),
    ],
)  # fmt: skip
def test_malformed_questions_name_file_entry_question_and_field(tmp_path, change, file, message):
    root = write_streamingbench(tmp_path / "data", _break(change), videos=False)
    with pytest.raises(DataError, match=message) as caught:
        StreamingBench(StreamingBenchConfig(root=str(root))).load()
    assert str(caught.value).startswith(str(root / file))


def test_missing_question_file_names_the_layout_and_the_readme(tmp_path):
    with pytest.raises(DataError, match=r"questions_real\.json: question file not found.*videos/.*README"):
        StreamingBench(StreamingBenchConfig(root=str(tmp_path))).load()


OFFICIAL_MCQ = 'import os\nos.system("exit 1")  # never run: read with ast\nPROMPT_TEMPLATE = """Official MC.\n\n' \
    'Question: {}\n\nOptions:\n{}\n{}\n{}\n{}"""\nPROMPT_TEMPLATE_WITHOUT_OPTIONS = "Q {}"\n'  # fmt: skip
OFFICIAL_SQA = '''PROMPT_TEMPLATE = """Official SQA.\n\n{}\n\nQuestion: {}\n\nOptions:\n{}\n{}\n{}\n{}\n\nBest:"""


def run(data):
    for video in data:
        context = ""
        for subset in video:
            for question in subset["questions"]:
                ques = question["question"]
                options = question["options"]
                if not context:
                    context += "Context {as given}: "
                context += f"At {question['time_stamp']}: Q: {ques}; O: {options[0]}, {options[1]}, {options[2]}, \\
{options[3]}; A: {question['answer']}; "
'''
OFFICIAL_PROACTIVE = '''PROMPT_TEMPLATE_PROACTIVE = """Official proactive.\n\nQuestion: {}\n\nThe answer is:\n"""


def run(question):
    query = f"{question['question']} Right time for \\"{question['ground_truth_output']}\\"? yes or no."
'''


def _checkout(folder: Path, **changes: str) -> Path:
    files = {"StreamingBench.py": OFFICIAL_MCQ, "StreamingBenchSQA.py": OFFICIAL_SQA}
    files |= {"StreamingBenchProactive.py": OFFICIAL_PROACTIVE, **changes}
    (folder / "src" / "benchmark").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / "src" / "benchmark" / name).write_text(text)
    return folder


def test_official_templates_are_read_from_a_checkout_with_ast(tmp_path, data_root):
    checkout = _checkout(tmp_path / "StreamingBench")
    templates = read_templates(checkout)
    assert templates.context_header == "Context {as given}: "  # plain text: its braces are not fields
    assert templates.trigger == '{question} Right time for "{ground_truth_output}"? yes or no.'
    bench = StreamingBench(StreamingBenchConfig(root=str(data_root), prompts=PromptsConfig(str(checkout))))
    queries = _queries(bench)
    assert bench.prompt(queries["real-0-0"][0]) == (
        "Official MC.\n\nQuestion: What shape is the red object on screen now?\n\nOptions:\nA. square\nB. circle\n"
        "C. triangle\nD. star\n\nThe best option is:"
    )
    assert bench.prompt(queries["sqa-0-1-0"][0]) == (
        "Official SQA.\n\nContext {as given}: At 00:00:10: Q: How many red objects have appeared so far?; "
        "O: A. 1, B. 2, C. 3, D. 0; A: A; \n\nQuestion: What shape is the cyan object on screen now?\n\n"
        "Options:\nA. circle\nB. square\nC. star\nD. triangle\n\nBest:"
    )
    assert queries["proactive-1-0"][0].trigger == (
        'Official proactive.\n\nQuestion: Tell me when a red object appears, and name its shape. Right time for "red"? '
        "yes or no.\n\nThe answer is:\n"
    )
    broken = {
        "StreamingBench.py": ("PROMPT_TEMPLATE = 'a' + 'b'\n", "PROMPT_TEMPLATE must be a string literal"),
        "StreamingBenchSQA.py": ("PROMPT_TEMPLATE = '{}'\n", r"the SQA context's opening string \(assigned or added"),
        "StreamingBenchProactive.py": (
            OFFICIAL_PROACTIVE.replace("{question['question']}", "{len(question)}"),
            r"the proactive trigger's f-string inserts \{len\(question\)\}, which we cannot fill",
        ),
    }
    for name, (text, message) in broken.items():
        with pytest.raises(ConfigError, match=message) as caught:
            read_templates(_checkout(tmp_path / name, **{name: text}))
        assert name in str(caught.value)
    six = 'PROMPT_TEMPLATE = "Question: {}\\nOptions: {} {} {} {} {}"\n'  # one slot more than the official code fills
    with pytest.raises(ConfigError, match="cannot fill the mcq template"):
        read_templates(_checkout(tmp_path / "six", **{"StreamingBench.py": six}))
    with pytest.raises(ConfigError, match=r"no .*src/benchmark/StreamingBench\.py.*THUNLP-MT/StreamingBench"):
        read_templates(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("qid", "response", "response_time_s", "score", "subscores"),
    [
        ("real-0-0", "B", None, 1.0, {"robust": 1.0}),
        ("real-0-0", "B. circle", None, 1.0, {"robust": 1.0}),
        ("real-0-0", " B", None, 0.0, {"robust": 1.0}),  # count.py: the first character only
        ("real-0-0", "b", None, 0.0, {"robust": 0.0}),
        ("real-0-0", "(B)", None, 0.0, {"robust": 1.0}),
        ("real-0-0", "The answer is B", None, 0.0, {"robust": 1.0}),
        ("real-0-0", "circle", None, 0.0, {"robust": 1.0}),  # robust: the one option it quotes
        ("real-0-0", None, None, 0.0, {"robust": 0.0}),
        ("omni-1-0", "E", None, 0.0, {"robust": 0.0}),
        ("proactive-0-0", "A green circle appeared.", 13.0, 1.0, {"time": 1.0, "content": 1.0}),
        ("proactive-0-0", "green circle", 14.0, 1.0, {"time": 1.0, "content": 1.0}),  # +2 s: inclusive
        ("proactive-0-0", "green circle", 10.0, 1.0, {"time": 1.0, "content": 1.0}),  # -2 s
        ("proactive-0-0", "Green circle", 12.0, 0.0, {"time": 1.0, "content": 0.0}),  # text: case-sensitive
        ("proactive-0-0", "green circle", 15.0, 0.0, {"time": 0.0, "content": 0.0}),  # 3 s late
        ("proactive-0-0", None, None, 0.0, {"time": 0.0, "content": 0.0}),  # never fired
    ],
)
def test_score_follows_count_py(bench, qid, response, response_time_s, score, subscores):
    query, truth = _queries(bench)[qid]
    assert bench.score(query, truth, response, response_time_s) == (score, subscores)


def test_validate_reports_a_time_past_the_end_and_compares_published_counts(tmp_path, data_root):
    bench = StreamingBench(StreamingBenchConfig(root=str(data_root)))
    report = validate(bench, "streamingbench", progress=False)
    assert report.ok and report.published == PUBLISHED_COUNTS
    assert report.per_task["CS"] == 1 and "task PO: 4 queries, published 51 (-47)" in report.warnings
    anomalous = _break(lambda f: f["questions_real.json"][1]["questions"][0].update(time_stamp="00:12450"))
    root = write_streamingbench(tmp_path / "data", anomalous, videos=False)
    samples = StreamingBench(StreamingBenchConfig(root=str(root), parts=["real"])).load()
    (query,) = [q for s in samples for q in s.queries if q.id == "real-1-0"]
    assert (query.time_s, query.clip_start_s, query.clip_end_s) == (12450.0, 12390.0, 12450.0)  # not clamped
    samples = [dataclasses.replace(s, video=str(data_root / "videos" / "sample_1_real.mp4")) for s in samples]
    errors = check_samples(samples, "streamingbench", progress=False).errors
    assert errors == [
        f"sample real-sample_1_real, query real-1-0: time 12450 s lies outside the video (duration 70 s, "
        f"{data_root / 'videos' / 'sample_1_real.mp4'})"
    ]


@dataclass(frozen=True)
class FixedConfig:
    name: str = "sb_fixed"


@BACKENDS.register("sb_fixed", FixedConfig)
class Fixed:
    """Fixed replies: a letter per multiple-choice question; a trigger says "Yes" from its firing time on;
    the bare proactive question gets its reply. Keeps every request."""

    answers: ClassVar[dict[str, str]] = {}  # question text -> reply
    triggers: ClassVar[dict[str, float | None]] = {}  # trigger prompt -> first time it says yes (None: never)
    replies: ClassVar[dict[str, str]] = {}  # prompt of a bare proactive question -> reply
    requests: ClassVar[list[Request]] = []

    def __init__(self, cfg: FixedConfig) -> None:
        self.cfg = cfg

    async def generate(self, request: Request) -> Response:
        Fixed.requests.append(request)
        if request.prompt in Fixed.triggers:
            fire_s = Fixed.triggers[request.prompt]
            text = "Yes" if fire_s is not None and request.time_s >= fire_s else "No"
        elif request.prompt in Fixed.replies:
            text = Fixed.replies[request.prompt]
        else:  # the question asked is the last "Question: " line (SQA context lines come before it)
            question = request.prompt.rsplit("\nQuestion: ", 1)[1].split("\n", 1)[0]
            text = Fixed.answers[question]
        return Response(text, tokens_in=1, tokens_out=1)

    async def aclose(self) -> None:
        pass


# reply, official score, robust
MCQ_REPLIES = {
    "real-0-0": ("B", 1.0, 1.0), "real-0-1": (" C", 0.0, 1.0), "real-1-0": ("b", 0.0, 0.0),
    "real-1-1": ("C. red circle", 1.0, 1.0), "real-2-0": ("The answer is A", 0.0, 1.0), "omni-0-0": ("A", 1.0, 1.0),
    "omni-1-0": ("B", 1.0, 1.0), "omni-2-0": ("(B)", 0.0, 1.0), "sqa-0-0-0": ("A", 1.0, 1.0),
    "sqa-0-1-0": ("B", 0.0, 0.0), "sqa-0-1-1": ("C", 1.0, 1.0), "sqa-1-0-0": ("A", 1.0, 1.0),
}  # fmt: skip
# first poll that says yes, the reply, then: response time, score (timing + text), time, content, backend calls
PO_PLAN = {
    "proactive-0-0": (13.0, "A green circle appeared.", 13.0, 1.0, 1.0, 1.0, 8 + 1),  # polls 6..13; g = 12
    "proactive-0-1": (23.0, "A blue square appeared.", 23.0, 0.0, 0.0, 0.0, 13 + 1),  # g = 20: 3 s late
    "proactive-1-0": (None, "", None, 0.0, 0.0, 0.0, 10),  # never fires: polls 3..12 (g + 4)
    "proactive-2-0": (24.0, "Nothing yellow.", 24.0, 0.0, 1.0, 0.0, 9 + 1),  # on time (g = 25), text missing
}  # fmt: skip


def _fixed_job(bench: StreamingBench, data_root: Path, *overrides: str):
    queries = _queries(bench)
    Fixed.requests.clear()
    Fixed.answers = {queries[qid][0].text: reply for qid, (reply, _, _) in MCQ_REPLIES.items()}
    Fixed.triggers = {queries[qid][0].trigger: plan[0] for qid, plan in PO_PLAN.items()}
    Fixed.replies = {bench.prompt(queries[qid][0]): plan[1] for qid, plan in PO_PLAN.items()}
    job, run, shard = compose_job(data_root, "dataset=streamingbench", *overrides)
    return dataclasses.replace(job, backend=Choice("backend", "sb_fixed", FixedConfig())), run, shard


def _per_task(records: dict[str, ResultRecord], key: str = "score") -> dict[str, float]:
    """Accuracy % per task of the records' scores, or of one subscore where records have it."""
    tasks: dict[str, list[float]] = {}
    for record in records.values():
        if key == "score" or key in record.subscores:
            tasks.setdefault(record.task, []).append(record.score if key == "score" else record.subscores[key])
    return {task: 100 * sum(values) / len(values) for task, values in tasks.items()}


def _export_and_score(job_dir: Path, tmp_path: Path, monkeypatch) -> tuple[dict[str, Any], Any]:
    monkeypatch.chdir(tmp_path)  # a relative output path, as a user types it
    assert analysis_main(["export", "--benchmark", "streamingbench", str(job_dir), "-o", "out/sb.json"]) == 0
    return json.loads((tmp_path / "out" / "sb.json").read_text()), score_predictions(tmp_path / "out" / "sb.json")


def test_official_span_job_scores_like_the_official_scorer_of_its_export(bench, data_root, tmp_path, monkeypatch):
    run_job(*_fixed_job(bench, data_root, "+experiment=official"), tmp_path / "job")
    records = {r.query_id: r for r in store.read_job(tmp_path / "job")}
    queries = _queries(bench)
    assert sorted(records) == sorted(MCQ_IDS + PO_IDS) and not any(r.has_error for r in records.values())
    for qid, (reply, score, strict) in MCQ_REPLIES.items():
        record, query = records[qid], queries[qid][0]
        assert (record.response, record.score, dict(record.subscores)) == (reply, score, {"robust": strict})
        assert record.span_end_s == query.clip_end_s and record.n_calls == 1 and record.frame_times_s
        assert query.clip_start_s <= min(record.frame_times_s) and max(record.frame_times_s) <= query.clip_end_s
    assert (min(records["real-1-1"].frame_times_s), max(records["real-1-1"].frame_times_s)) == (5.0, 65.0)
    assert all(not r.history and len(r.frames) <= 64 for r in Fixed.requests)  # stateless, 64 frames at most
    for qid, (_, reply, time_s, score, on_time, content, calls) in PO_PLAN.items():
        record, query = records[qid], queries[qid][0]
        assert (record.response_time_s, record.score, record.n_calls) == (time_s, score, calls)
        assert dict(record.subscores) == {"time": on_time, "content": content}
        assert record.response == (reply if time_s is not None else None)
        if record.frame_times_s:  # the official clip [time_stamp, poll time]
            assert query.clip_start_s <= min(record.frame_times_s) and max(record.frame_times_s) <= time_s
    (third,) = [r.prompt for r in Fixed.requests if "Question: What shape was the red object" in r.prompt]
    earlier = "Question: What shape is the cyan object on screen now?; Options: A. circle, B. square, C. star, D. "
    assert earlier + "triangle; Answer: A; " in third  # the ground truth in the context; this system answered "B"
    polls = [r.time_s for r in Fixed.requests if r.prompt == queries["proactive-1-0"][0].trigger]
    assert polls == [float(t) for t in range(3, 13)]  # each second from time_stamp + 1 to ground truth + 4

    exported, table = _export_and_score(tmp_path / "job", tmp_path, monkeypatch)
    assert list(exported) == ["real", "omni", "sqa", "proactive"]
    assert [len(video) for video in exported["sqa"]] == [2, 1]  # one list of entries per video, as the file
    first = exported["real"][0]
    assert first["video_path"] == "./videos/sample_1_real.mp4" and first["time"] == "[0:00:00 - 0:00:40]"
    assert [q["harness"] for q in first["questions"]] == ["B", " C"]
    assert first["questions"][0] == {**FILES["questions_real.json"][0]["questions"][0], "harness": "B"}
    assert exported["proactive"][0]["questions"][0]["harness"] == {
        "answered": 13,
        "dialog_history": [
            {"role": "user", "content": "Tell me when a green object appears, and name its shape.", "time": 13},
            {"role": "assistant", "content": "A green circle appeared.", "time": 13},
        ],
    }
    never = exported["proactive"][1]["questions"][0]["harness"]  # its last poll: ground truth (8) + 4, no reply
    assert never["answered"] is False
    assert never["dialog_history"][-1] == {"role": "assistant", "content": "", "time": 12}
    job_scores = _per_task(records)
    assert table.tasks == pytest.approx({**job_scores, "PO": 50.0, "PO_content": job_scores["PO"]})
    assert _per_task(records, "time")["PO"] == table.tasks["PO"]  # count.py's time_accuracy = our `time`
    counts = {task: sum(r.task == task for r in records.values()) for task in job_scores}
    assert table.counts == {**counts, "PO_content": 4}
    assert table.overall == pytest.approx(100 * sum(r.score for r in records.values()) / len(records))


def test_errors_are_left_out_of_the_export(bench):
    samples = bench.load()
    common = {"schema": RECORD_SCHEMA, "config_hash": "x", "sample_id": "s", "kind": "mcq", "time_s": 0.0}
    records = [
        ResultRecord(**common, query_id="real-0-0", task="OP", response="B", score=1.0),
        ResultRecord(**common, query_id="real-0-1", task="ATP", error="BackendError: timed out"),
        ResultRecord(**common, query_id="proactive-2-0", task="PO", error="BackendError: timed out"),
    ]
    results = to_official_results(samples, records, model="mine")
    assert [("mine" in q) for q in results["real"][0]["questions"]] == [True, False]
    assert all("mine" not in q for e in results["proactive"] for q in e["questions"])
    assert sum(len(e["questions"]) for e in results["real"]) == 5  # every question of the job is written
    omni = [s for s in samples if s.id.startswith("omni")]
    assert to_official_results(omni, []) == {"omni": FILES["questions_omni.json"]}  # no records: no responses


def test_reference_backend_job_is_recorded_and_scored_like_its_export(data_root, tmp_path, monkeypatch):
    job, run, shard = compose_job(data_root, "dataset=streamingbench")
    run_job(job, run, shard, tmp_path / "job")
    records = {r.query_id: r for r in store.read_job(tmp_path / "job")}
    assert sorted(records) == sorted(MCQ_IDS + PO_IDS)
    assert [qid for qid, r in records.items() if r.has_error] == []
    assert all(r.span_end_s is None and r.audio is False for r in records.values())  # the default span: query time
    assert records["real-0-0"].response == "B. circle" and records["real-0-0"].score == 1.0  # red circle on screen
    assert records["sqa-1-0-0"].response == "A. blue" and records["sqa-1-0-0"].score == 1.0
    assert (records["proactive-1-0"].response, records["proactive-1-0"].n_calls) == (None, 10)  # never fired
    for qid in MCQ_IDS:
        assert max(records[qid].frame_times_s) <= records[qid].time_s  # never a frame after the question
    _, table = _export_and_score(tmp_path / "job", tmp_path, monkeypatch)
    job_scores, on_time = _per_task(records), _per_task(records, "time")
    assert table.tasks == pytest.approx({**job_scores, "PO": on_time["PO"], "PO_content": job_scores["PO"]})


@pytest.mark.parametrize(
    ("scheduler", "polls", "response_time_s", "on_time"),
    [
        # S1 costs 0.2 s a call: polls every second 6..13 (each done before the next), fires at 13, out at 13.4
        ("force_s1", [6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0], 13.4, 1.0),
        # S2 costs 2 s a call: a poll asked while the last one computes starts when it ends: 6, 8, 10, 12, 14;
        # fires at 14 (the trigger says yes from 13), out at 14 + 2 (poll) + 2 (answer) = 18: past g + 2 = 14
        ("force_s2", [6.0, 8.0, 10.0, 12.0, 14.0], 18.0, 0.0),
    ],
)
def test_realtime_modelled_latency_makes_the_slow_route_miss_the_proactive_window(
    bench, data_root, tmp_path, scheduler, polls, response_time_s, on_time
):
    only = tmp_path / "only.txt"  # its stream's other proactive query would poll in between: alone, by hand
    only.write_text("proactive-0-0\n")
    job, run, shard = _fixed_job(
        bench, data_root, "+experiment=official", f"scheduler={scheduler}", "system.realtime=true",
        "system.latency=modelled", "system.s1.latency_model={base_s: 0.2}", "system.s2.latency_model={base_s: 2.0}",
        f"run.only_queries={only}",
    )  # fmt: skip
    run_job(job, run, shard, tmp_path / "job")
    (record,) = store.read_job(tmp_path / "job")  # ground truth at 12 s
    trigger = _queries(bench)["proactive-0-0"][0].trigger
    assert [r.time_s for r in Fixed.requests if r.prompt == trigger] == polls  # frames up to each poll's start
    assert (record.response_time_s, record.answered_at_s, record.subscores["time"]) == (
        response_time_s,
        response_time_s,
        on_time,
    )
    assert record.modelled_latency_s == pytest.approx((len(polls) + 1) * (0.2 if scheduler == "force_s1" else 2.0))
    assert record.paths[record.route]["response_time_s"] == response_time_s
    (written,) = (tmp_path / "job" / "shards").glob("*.jsonl")
    assert not written.with_suffix(".done").exists()  # its stream's other queries are still to be asked
