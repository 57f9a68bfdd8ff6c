"""CogStream adapter on a hand-written test set: the concatenated stream, errors, judge prompts, judged jobs."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from backends.base import BACKENDS
from harness.benchmarks import cogstream_scoring
from harness.benchmarks.base import PromptsConfig
from harness.benchmarks.cogstream import CogStream, CogStreamConfig
from harness.benchmarks.cogstream_scoring import DIMENSIONS
from harness.errors import ConfigError, DataError
from harness.records import Request, Response
from harness.registry import Choice
from harness.runner import store
from harness.runner.job import run_job
from tests.fixtures.cogstream_data import write_cogstream
from tests.helpers import compose_job

# the asked order of each video (grouped by Event_Time; cook01's QA 2 belongs to the first segment), the time
# each is asked (the last 4 fps tick of its segment in the built stream), and its segment's grey level
ASKED = {
    "cook01_0": (1.75, 40), "cook01_2": (1.75, 40), "cook01_1": (3.25, 120), "cook01_3": (5.75, 200),
    "cook01_4": (5.75, 200), "walk02_0": (1.25, 60), "walk02_1": (3.25, 160), "walk02_2": (3.25, 160),
}  # fmt: skip
TITLES = {"Informational Accuracy": "IA", "Detail Completeness": "DC", "Context Awareness": "CA",
          "Temporal Precision": "TP", "Logical Consistency": "LC"}  # fmt: skip
# judge outputs per question, in the order IA DC CA TP LC, and what is read from them (None: unreadable)
JUDGE = {
    "What is the cook holding?": ['{"PredA0": 8}', '{"PredA0": 6}', '{"PredA0": 7}', '{"PredA0": 9}', '{"PredA0": 10}'],
    "What colour is the pot?": ['{"PredA1": 5}'] * 5,  # QA 2, but the only pair: read
    "What did she add after the onions?":
        ['{"PredA1": 4}', "unsure", '{"PredA1": 6}', '{"PredA1": 11}', '{"PredA1": 5}'],
    "Why did she lower the heat?": ["no score"] * 5,
    "Summarise what she has cooked so far.":
        ['{"PredA4": 9, "PredA14": 1}', '{"PredA4": 7.5}', '{"PredA4": "8"}', '{"PredA4": 6}', '{"PredA4": 10}'],
    "Where is the man walking?": ['{"PredA0": 3}'] * 5,
    "What did he pick up?": ['{"PredA1": 6}'] * 5,
    "What is he doing overall?": ['{"PredA2": 7}'] + ['{"PredA2": 9}'] * 4,
}  # fmt: skip
READ = {  # by hand from JUDGE
    "cook01_0": {"IA": 8, "DC": 6, "CA": 7, "TP": 9, "LC": 10},
    "cook01_2": dict.fromkeys(DIMENSIONS, 5),
    "cook01_1": {"IA": 4, "CA": 6, "LC": 5},
    "cook01_3": {},
    "cook01_4": {"IA": 9, "DC": 7, "CA": 8, "TP": 6, "LC": 10},
    "walk02_0": dict.fromkeys(DIMENSIONS, 3),
    "walk02_1": dict.fromkeys(DIMENSIONS, 6),
    "walk02_2": {"IA": 7, "DC": 9, "CA": 9, "TP": 9, "LC": 9},
}
SCORES = {"cook01_0": 0.8, "cook01_2": 0.5, "cook01_1": 0.5, "cook01_3": 0.0, "cook01_4": 0.8,
          "walk02_0": 0.3, "walk02_1": 0.6, "walk02_2": 0.86}  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_cogstream(tmp_path_factory.mktemp("cog") / "cogstream")


def test_load_concatenates_segments_and_asks_each_segments_questions_at_its_end(data_root):
    bench = CogStream(CogStreamConfig(root=str(data_root)))
    cook, walk = bench.load()
    assert [q.id for q in cook.queries + walk.queries] == list(ASKED)
    assert {q.id: q.time_s for q in cook.queries + walk.queries} == {k: t for k, (t, _) in ASKED.items()}
    assert [q.follows for q in cook.queries] == [None, "cook01_0", "cook01_2", "cook01_1", "cook01_3"]
    assert [q.task for q in cook.queries] == ["Obj", "Att", "Seq", "Rea", "Over"]
    assert [q.task for q in walk.queries] == ["TempP", "Dyn", "Glob"]
    assert cook.extras["segments"] == [f"cook01_segment_{n}.mp4" for n in (1, 2, 3)]  # the 4th has no question
    assert cook.extras["spans"] == [(0.0, 2.0), (2.0, 3.5), (3.5, 6.0)] and cook.duration_s == 6.0
    assert Path(cook.video).parent == data_root / "streams" and walk.duration_s == 3.5
    assert cook.truths["cook01_3"].answer == "To stop the garlic burning."
    sidecar = json.loads(Path(cook.video).with_suffix(".json").read_text())
    assert [s["last_s"] for s in sidecar["segments"]] == [1.75, 3.25, 5.75] and sidecar["fps"] == 4.0
    assert bench.prompt(cook.queries[0]) == "What is the cook holding?" and bench.fired("yes") is False


def test_streams_are_built_once_and_per_setting(data_root):
    first = CogStream(CogStreamConfig(root=str(data_root))).load()[0]
    built = Path(first.video).stat().st_mtime_ns
    again = CogStream(CogStreamConfig(root=str(data_root))).load()[0]
    assert again.video == first.video and Path(again.video).stat().st_mtime_ns == built
    other = CogStream(CogStreamConfig(root=str(data_root), stream_fps=2.0)).load()[0]
    assert other.video != first.video and [q.time_s for q in other.queries] == [1.5, 1.5, 3.0, 5.5, 5.5]


def test_sequence_tasks_and_history_knobs(data_root):
    cook, walk = CogStream(CogStreamConfig(root=str(data_root), sequence=1)).load()
    assert [(q.id, q.time_s, q.task) for q in cook.queries] == [("cook01_0", 1.75, "Env"), ("cook01_1", 3.25, "Dial")]
    assert [(q.id, q.time_s) for q in walk.queries] == [("walk02_0", 1.25)]  # one segment used
    bench = CogStream(CogStreamConfig(root=str(data_root), tasks=["Rea", "Over"], history=False))
    [cook] = bench.load()  # walk02 has no question of these tasks
    assert [(q.id, q.time_s, q.follows) for q in cook.queries] == [("cook01_3", 5.75, None), ("cook01_4", 5.75, None)]
    with pytest.raises(ConfigError, match=r"tasks \['Foo'\] unknown; choose from Att, Obj, CoRef"):
        CogStream(CogStreamConfig(tasks=["Foo"]))
    with pytest.raises(DataError, match=r"cook01\.json: dataset\.sequence=2, but the file has 2 sequences"):
        CogStream(CogStreamConfig(root=str(data_root), sequence=2)).load()


def test_missing_and_broken_segments_point_the_sample_at_them(tmp_path):
    root = write_cogstream(tmp_path / "cog")
    segments = root / "Test_dataset" / "event_segments"
    (segments / "walk02" / "walk02_segment_2.mp4").unlink()
    (segments / "cook01" / "cook01_segment_1.mp4").write_bytes(b"not a video")
    cook, walk = CogStream(CogStreamConfig(root=str(root))).load()
    assert cook.video == str(segments / "cook01" / "cook01_segment_1.mp4")
    assert walk.video == str(segments / "walk02" / "walk02_segment_2.mp4") and walk.duration_s == 3.5
    shutil.rmtree(segments / "walk02")
    assert CogStream(CogStreamConfig(root=str(root))).load()[1].video == str(segments / "walk02")


def _edit(root: Path, folder: str, video: str, change) -> None:
    path = root / "Test_dataset" / folder / f"{video}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("folder", "change", "message"),
    [
        ("VQA_Dataset", lambda d: d[0]["Data"][1].update(label="Basic/Smell"), r"Data\[1\]: field 'label' is not a"),
        ("VQA_Dataset", lambda d: d[0]["Data"][2].update(ID=7), r"Data\[2\]: field 'ID' must be the QA's index 2"),
        ("VQA_Dataset", lambda d: d[0]["Data"].pop(), r"sequence 0: 2 QAs in Data, but the QA_Dataset file has 3"),
        ("QA_Dataset", lambda d: d[0][1]["info"].update(relevance="[1, 0]"), r"QA 1, info: field 'relevance' must"),
        ("QA_Dataset", lambda d: d[0][2]["info"].update(relevance="[1, 2]"), r"QA 2, info: field 'relevance'"),
        ("QA_Dataset", lambda d: d[0][0]["info"].update(Event_Time=-2), r"QA 0, info: field 'Event_Time' must be >="),
        ("QA_Dataset", lambda d: d[0][0].pop("Q"), r"sequence 0, QA 0: field 'Q' is missing"),
    ],
)
def test_malformed_annotations_name_file_sequence_qa_and_field(tmp_path, folder, change, message):
    root = write_cogstream(tmp_path / "cog", segments=False)
    _edit(root, folder, "walk02", change)
    with pytest.raises(DataError, match=message) as caught:
        CogStream(CogStreamConfig(root=str(root))).load()
    assert f"{folder}/walk02.json" in str(caught.value)


def test_missing_files_name_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"QA_Dataset: no such folder.*VQA_Dataset/<video>.json.*README"):
        CogStream(CogStreamConfig(root=str(tmp_path))).load()
    root = write_cogstream(tmp_path / "cog", segments=False)
    (root / "Test_dataset" / "VQA_Dataset" / "walk02.json").unlink()
    with pytest.raises(DataError, match=r"VQA_Dataset/walk02\.json: not found \(the labelled sequences"):
        CogStream(CogStreamConfig(root=str(root))).load()


def test_own_judge_prompts_give_the_related_ground_truth_to_all_but_ia(data_root):
    bench = CogStream(CogStreamConfig(root=str(data_root)))
    cook = bench.load()[0]
    query = next(q for q in cook.queries if q.id == "cook01_3")
    prompts = {p.key: p for p in bench.judge_prompts(query, cook.truths[query.id], "She was tired.")}
    assert list(prompts) == list(DIMENSIONS)
    context = "\nQA1: What did she add after the onions? Garlic."  # relevance [0, 1, 0]: QA 1 only
    assert all(context in prompts[d].user for d in ("DC", "CA", "TP", "LC")) and context not in prompts["IA"].user
    for dim, prompt in prompts.items():
        assert "\nQ3: Why did she lower the heat?" in prompt.user and "\nPredA3: She was tired." in prompt.user
        assert "\nA3: To stop the garlic burning." in prompt.user and TITLES[_title(prompt.system)] == dim
    first = bench.judge_prompts(cook.queries[0], cook.truths["cook01_0"], "A spoon.")
    assert all("Earlier dialogue" not in p.user for p in first)  # nothing related: the context line is left out


def _title(system: str) -> str:
    return re.search(r"\*\*(.+?)\*\*", system).group(1)


OFFICIAL_IA = """import json
def annotate(seq_data, file, seq_id):
    for qa_id, single_qa in enumerate(seq_data):
        prompt1 = '''
        You rate **Informational Accuracy**.'''
        prompt2 = (f'''
        - Questions: {questions}
        - Correct Answers: {answers}
        - Predicted Answers: {preds}
        '''
        '''
        {
            "PredA1":score,
        }
        ''')
        messages = [{"role": "system", "content": prompt1}, {"role": "user", "content": prompt2}]
"""
OFFICIAL_CA = """import json
def annotate(seq_data, file, seq_id):
    for qa_id, single_qa in enumerate(seq_data):
        if qa_id:
            coi_qas = ''
            coi_qas += f"\\nQA{count}: {seq_data[idx]['question']}"
        prompt1 = '''You rate **{title}**.'''
        prompt2 = f'''
### Input:
'''
        if qa_id and coi_qas:
            prompt2 += f'''- Video preceding context:{coi_qas}'''
        prompt2 += (f'''
- Questions: {questions}
- Predicted Answers: {preds}
''' '''{"PredA1":score}''')
"""


def test_official_judge_prompts_from_a_checkout_keep_their_condition(tmp_path, data_root):
    folder = tmp_path / "evaluate" / "eval_metrics"
    folder.mkdir(parents=True)
    (folder / "eval_1_IA.py").write_text(OFFICIAL_IA)
    for dim, name in cogstream_scoring.OFFICIAL_FILES.items():
        if dim != "IA":
            title = next(t for t, d in TITLES.items() if d == dim)
            (folder / name).write_text(OFFICIAL_CA.replace("{title}", title))
    bench = CogStream(CogStreamConfig(root=str(data_root), prompts=PromptsConfig(str(tmp_path))))
    cook = bench.load()[0]
    later, first = (next(q for q in cook.queries if q.id == i) for i in ("cook01_3", "cook01_0"))
    prompts = {p.key: p for p in bench.judge_prompts(later, cook.truths[later.id], "Tired.")}
    assert prompts["IA"].system == "\n        You rate **Informational Accuracy**."
    assert prompts["IA"].user == (
        "\n        - Questions: \nQ3: Why did she lower the heat?\n        - Correct Answers: \nA3: To stop the garlic "
        'burning.\n        - Predicted Answers: \nPredA3: Tired.\n        \n        {\n            "PredA1":score,\n'
        "        }\n        "
    )
    assert prompts["CA"].system == "You rate **Context Awareness**."
    assert prompts["CA"].user == (
        "\n### Input:\n- Video preceding context:\nQA1: What did she add after the onions? Garlic."
        '\n- Questions: \nQ3: Why did she lower the heat?\n- Predicted Answers: \nPredA3: Tired.\n{"PredA1":score}'
    )
    [ca] = [p for p in bench.judge_prompts(first, cook.truths[first.id], "A spoon.") if p.key == "CA"]
    assert ca.user.startswith("\n### Input:\n\n- Questions: \nQ0: What is the cook holding?")  # no context: left out
    (folder / "eval_4_TP.py").write_text("prompt2 = 'x'\n")
    with pytest.raises(ConfigError, match=r"eval_4_TP\.py: no string assignment to prompt1"):
        CogStream(CogStreamConfig(prompts=PromptsConfig(str(tmp_path))))


@dataclass(frozen=True)
class AnswerConfig:
    name: str = "cog_answers"


@BACKENDS.register("cog_answers", AnswerConfig)
class Answers:
    """Names the grey level of the latest frame and the number of earlier turns; keeps every request."""

    requests: list[Request] = []

    def __init__(self, cfg: AnswerConfig) -> None:
        self.cfg = cfg

    async def generate(self, request: Request) -> Response:
        Answers.requests.append(request)
        level = int(np.round(request.frames[-1].pixels.mean()))
        return Response(f"level {level} after {len(request.history)} turns", tokens_in=1, tokens_out=1)

    async def aclose(self) -> None:
        pass


@dataclass(frozen=True)
class JudgeConfig:
    name: str = "cog_judge"


@BACKENDS.register("cog_judge", JudgeConfig)
class Judge:
    """The fixed output (`JUDGE`) for the question and dimension of each prompt; keeps every request."""

    requests: list[Request] = []

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg

    async def generate(self, request: Request) -> Response:
        Judge.requests.append(request)
        question = re.search(r"\nQ\d+: (.*)\n", request.prompt).group(1)
        return Response(JUDGE[question][DIMENSIONS.index(TITLES[_title(request.system)])])

    async def aclose(self) -> None:
        pass


def _job(data_root: Path, tmp_path: Path, *overrides: str):
    # S1 answers from the recent frames, so the latest frame shown is the one on screen at the question
    job, run, shard = compose_job(data_root, "dataset=cogstream", "judge=llm", "scheduler=force_s1", *overrides)
    judge = dataclasses.replace(job.judge, backend={"name": "cog_judge"})
    job = dataclasses.replace(job, backend=Choice("backend", "cog_answers", AnswerConfig()), judge=judge)
    return job, dataclasses.replace(run, judge_cache=str(tmp_path / "judgments.sqlite")), shard


def test_judged_job_sees_only_its_segments_keeps_its_own_answers_and_scores_five_dimensions(data_root, tmp_path):
    Answers.requests.clear()
    Judge.requests.clear()
    run_job(*_job(data_root, tmp_path), tmp_path / "job")
    records = {r.query_id: r for r in store.read_job(tmp_path / "job")}
    assert set(records) == set(ASKED)
    for query_id, record in records.items():
        time_s, level = ASKED[query_id]
        assert record.error is None and record.time_s == time_s and max(record.frame_times_s) <= time_s
        assert abs(int(record.response.split()[1]) - level) <= 3  # the latest frame is from the question's segment
        assert dict(record.subscores) == READ[query_id] and record.score == pytest.approx(SCORES[query_id])
        assert record.judge_failed == tuple(d for d in DIMENSIONS if d not in READ[query_id])
        assert set(record.judge_outputs) == set(DIMENSIONS)
    assert [json.loads(records[q].judge_outputs["IA"]) for q in ("cook01_0", "walk02_2")] == [
        {"PredA0": 8},
        {"PredA2": 7},
    ]
    # the dialogue: every question carries the earlier questions of its video with the system's own answers
    asked = {r.prompt: r for r in Answers.requests}
    history = asked["Why did she lower the heat?"].history
    assert [t.question for t in history] == [
        "What is the cook holding?", "What colour is the pot?", "What did she add after the onions?",
    ]  # fmt: skip
    assert [t.answer for t in history] == [records[q].response for q in ("cook01_0", "cook01_2", "cook01_1")]
    assert [t.answer.split()[-2] for t in asked["Summarise what she has cooked so far."].history] == list("0123")
    assert len(Judge.requests) == 40 and all(not r.frames for r in Judge.requests)

    table = cogstream_scoring.official_table(records.values())  # by hand from READ (TempP and cook01_3 left out)
    assert table.tasks == pytest.approx(
        {"Obj": 80.0, "Att": 50.0, "Seq": 50.0, "Dyn": 60.0, "Over": 80.0, "Glob": 86.0}
    )
    assert table.categories == pytest.approx({"IA": 65.0, "DC": 66.0, "CA": 410 / 6, "TP": 70.0, "LC": 75.0})
    assert table.overall == pytest.approx((65 + 66 + 410 / 6 + 70 + 75) / 5)

    run_job(*_job(data_root, tmp_path), tmp_path / "job")  # all recorded: neither the model nor the judge
    assert len(Answers.requests) == 8 and len(Judge.requests) == 40
    run_job(*_job(data_root, tmp_path), tmp_path / "again")  # same answers: every judgment from the cache
    assert len(Answers.requests) == 16 and len(Judge.requests) == 40
    manifest = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert (manifest["judge_calls"], manifest["judge_cached"]) == (0, 40)


def test_bad_segments_stop_the_job_or_are_skipped(tmp_path):
    root = write_cogstream(tmp_path / "cog")
    (root / "Test_dataset" / "event_segments" / "walk02" / "walk02_segment_2.mp4").unlink()
    with pytest.raises(DataError, match=r"(?s)walk02_segment_2\.mp4 \(sample walk02\): missing.*on_bad_item=skip"):
        run_job(*_job(root, tmp_path), tmp_path / "job")
    run_job(*_job(root, tmp_path, "dataset.on_bad_item=skip"), tmp_path / "skip")
    assert {r.sample_id for r in store.read_job(tmp_path / "skip")} == {"cook01"}
    skipped = json.loads((tmp_path / "skip" / "manifest.json").read_text())["skipped"]
    assert [s["sample"] for s in skipped] == ["walk02"]
