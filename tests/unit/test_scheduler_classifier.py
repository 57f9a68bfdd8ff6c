"""The classifier scheduler trained on a crafted `both` run: held-out paraphrases go to the right route, the stream
state counts, and the model file is plain JSON that round-trips and is refused when it does not fit."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.records import Query
from harness.scheduler import SCHEDULERS, StreamState
from harness.scheduler_learned import MODEL_FORMAT, ClassifierModel
from harness.train_scheduler import train
from tests.unit.test_train_scheduler import both_record, crafted_records, write_job


def _query(text: str, time_s: float = 30.0) -> Query:
    return Query(id="q", time_s=time_s, text=text, task="any", kind="mcq")


def _classifier(checkpoint: Path | str, **fields):
    return SCHEDULERS.build(SCHEDULERS.parse({"name": "classifier", "checkpoint": str(checkpoint), **fields}))


STATE = StreamState(now_s=30.0, memory_frames=60)


def _route(scheduler, text: str, state: StreamState = STATE):
    return asyncio.run(scheduler.route(_query(text, state.now_s), state))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("classifier")
    return train(write_job(folder / "run", crafted_records()), progress=False).save(folder / "model.json")


@pytest.fixture(scope="module")
def classifier(checkpoint):
    return _classifier(checkpoint)


@pytest.mark.parametrize(
    ("text", "route"),
    [
        ("What is the woman holding at this moment?", "S1"),
        ("Which colour is the triangle displayed now?", "S1"),
        ("Is the door open right now?", "S1"),
        ("How many squares have been shown so far?", "S2"),
        ("What was the first object to appear?", "S2"),
        ("Where was the cup placed earlier?", "S2"),
    ],
)
def test_held_out_paraphrases_go_to_the_route_that_won_their_kind_of_question(classifier, text, route):
    decision = _route(classifier, text)
    match = re.fullmatch(r"classifier: P\(S2\)=(\d\.\d\d)", decision.reason)
    assert match, decision.reason
    assert decision.route == route, decision.reason
    assert 0.0 < decision.score < 1.0 and abs(decision.score - float(match[1])) <= 0.005  # score = P(S2)
    assert (decision.score > 0.5) == (route == "S2")


def test_the_threshold_moves_the_boundary(checkpoint):
    question = "What colour is the square on screen now?"
    assert _route(_classifier(checkpoint, threshold=0.0), question).route == "S2"  # any P(S2) > 0
    assert _route(_classifier(checkpoint, threshold=1.0), "How many circles have appeared so far?").route == "S1"


def test_the_stream_state_counts_when_it_decides_the_label(tmp_path):
    """One question; early in the stream S1's window still holds everything (both right, S1 cheaper), later only
    S2 answers it: the classifier learns to send it to S1 early and to S2 late."""
    question = "How many circles have appeared so far?"
    early = [both_record(i, question, t, 1.0, 1.0) for i, t in enumerate((3.0, 4.0, 5.0, 6.0, 7.0, 8.0))]
    late = [both_record(10 + i, question, t, 0.0, 1.0) for i, t in enumerate((60.0, 75.0, 90.0, 105.0, 120.0))]
    model = train(write_job(tmp_path / "run", early + late), progress=False).save(tmp_path / "m.json")
    scheduler = _classifier(model)
    early_state, late_state = StreamState(5.0, 10), StreamState(100.0, 200, since_scene_change_s=3.0)
    assert _route(scheduler, question, early_state).route == "S1"
    assert _route(scheduler, question, late_state).route == "S2"


def test_the_model_file_is_readable_json_that_round_trips(checkpoint):
    body = json.loads(checkpoint.read_text())
    assert body["format"] == MODEL_FORMAT
    assert body["stream_features"] == ["time_s", "memory_frames", "since_scene_change_s"]
    assert body["embedder"]["path"] == "" and body["embedder"]["dim"] == 384 and len(body["embedder"]["sha256"]) == 16
    assert all(len(body["embedding"][k]) == 384 and len(body["stream"][k]) == 3 for k in ("mean", "std", "weights"))
    time_s, since_s = (6 + 35 + 90) / 3, (6 + 35 + 90 + 3 + 35 + 90) / 6  # PAST questions at 6 s: a change at 3 s
    assert body["stream"]["mean"] == pytest.approx([time_s, 2 * time_s, since_s])
    assert {"n", "labels", "accuracy", "run", "jobs", "l2", "correct"} <= set(body["training"])
    model = ClassifierModel.load(checkpoint)
    assert ClassifierModel.load(model.save(checkpoint.with_name("copy.json"))) == model
    assert checkpoint.with_name("copy.json").read_bytes() == checkpoint.read_bytes()


def test_a_missing_or_foreign_model_names_the_field_and_the_training_command(checkpoint, tmp_path):
    command = r"python -m harness\.train_scheduler"
    with pytest.raises(ConfigError, match=rf"scheduler\.checkpoint is empty\. Train a model with {command}"):
        _classifier("")
    with pytest.raises(ConfigError, match=rf"scheduler\.checkpoint=.*nope\.json: no such file\. Train one: {command}"):
        _classifier(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json: cannot read it"):
        _classifier(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "harness.indexer/1"}))
    with pytest.raises(ConfigError, match=r"other\.json: not a classifier scheduler model"):
        _classifier(tmp_path / "other.json")
    body = json.loads(checkpoint.read_text())
    (tmp_path / "short.json").write_text(json.dumps({**body, "stream": {**body["stream"], "weights": [0.0]}}))
    with pytest.raises(ConfigError, match=r"short\.json: weight sizes do not match"):
        _classifier(tmp_path / "short.json")
    (tmp_path / "foreign.json").write_text(json.dumps({**body, "embedder": {**body["embedder"], "sha256": "0" * 16}}))
    with pytest.raises(ConfigError, match=r"trained on the embeddings of .* but scheduler\.embedder_path=''"):
        _classifier(tmp_path / "foreign.json")
    with pytest.raises(ConfigError, match=r"scheduler\.embedder_path.*no config\.json there"):
        _classifier(checkpoint, embedder_path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"threshold must be in 0\.\.1"):
        _classifier(checkpoint, threshold=1.5)
