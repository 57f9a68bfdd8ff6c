"""`python -m harness.benchmarks validate` on the hand-written OVO-Bench folder, clean and broken, and on synthetic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.benchmarks.__main__ import main
from harness.benchmarks.ovo_bench import PUBLISHED_COUNTS
from harness.benchmarks.validate import check_samples
from harness.records import Query, StreamSample
from tests.fixtures.ovo_bench_data import write_ovo_bench
from tests.helpers import ROOT

# queries per task in the fixture: 5 MCQ items, REC 4 probes, SSR 3, CRR 5
FIXTURE_COUNTS = {"EPM": 1, "ASI": 1, "HLD": 1, "OCR": 1, "STU": 1, "REC": 4, "SSR": 3, "CRR": 5}


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    return write_ovo_bench(tmp_path_factory.mktemp("ovo") / "ovo_bench")


@pytest.fixture
def broken_root(clean_root, tmp_path) -> Path:
    """A private copy of the clean folder, for a test to break."""
    return Path(shutil.copytree(clean_root, tmp_path / "ovo_bench"))


def _validate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["validate", "--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _section(out: str, kind: str) -> list[str]:
    """The indented lines under `errors:` or `warnings:`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{kind}:"))
    return [line.strip() for line in lines[start + 1 :] if line.startswith("  ")][: _count(lines[start])]


def _count(header: str) -> int:
    value = header.split(":", 1)[1].strip()
    return 0 if value == "none" else int(value)


def test_clean_folder_validates_in_a_subprocess_with_counts_and_published_warnings(clean_root, tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "harness.benchmarks",
        "validate",
        "dataset=ovo_bench",
        f"dataset.root={clean_root}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.splitlines()[0] == "dataset=ovo_bench: 2 samples (videos), 17 queries"
    for task, published in PUBLISHED_COUNTS.items():
        assert f"  {task} {FIXTURE_COUNTS.get(task, 0):>6}  (published {published})" in out
    assert "errors: none" in out and out.rstrip().endswith("OK: 0 errors, 12 warnings")
    warnings = _section(out, "warnings")
    assert warnings[0] == "task EPM: 1 queries, published 297 (-296)"
    assert {"task REC: 4 queries, published 698 (-694)", "task ACR: 0 queries, published 109 (-109)"} <= set(warnings)
    assert len(warnings) == 12


def test_a_task_subset_is_compared_only_where_selected_and_the_cap_folds_the_rest(clean_root, capsys):
    code, out, _ = _validate(capsys, "dataset=ovo_bench", f"dataset.root={clean_root}", "dataset.tasks=[CRR]")
    assert code == 0
    assert out.splitlines()[0] == "dataset=ovo_bench: 1 samples (videos), 5 queries"
    assert _section(out, "warnings") == ["task CRR: 5 queries, published 240 (-235)"]

    code, out, _ = _validate(capsys, "dataset=ovo_bench", f"dataset.root={clean_root}", "--cap=3")
    assert code == 0
    assert "warnings: 12" in out and "  ... and 9 more" in out
    assert _section(out, "warnings")[:3] == [
        "task EPM: 1 queries, published 297 (-296)",
        "task ASI: 1 queries, published 148 (-147)",
        "task HLD: 1 queries, published 186 (-185)",
    ]


def test_missing_video_is_an_error_naming_its_path(broken_root, capsys):
    missing = broken_root / "src_videos" / "COIN" / "b1.mp4"
    missing.unlink()
    code, out, _ = _validate(capsys, "dataset=ovo_bench", f"dataset.root={broken_root}")
    assert code == 1
    assert _section(out, "errors") == [f"video {missing} (sample COIN_b1.mp4): missing (no such file)"]
    assert out.rstrip().endswith("FAILED: 1 errors, 12 warnings")


def test_corrupt_video_is_an_error_with_the_decoders_message(broken_root, capsys):
    corrupt = broken_root / "src_videos" / "Ego4D" / "clips" / "a1.mp4"
    corrupt.write_bytes(b"\x00\x01garbage\xff")
    code, out, _ = _validate(capsys, "dataset=ovo_bench", f"dataset.root={broken_root}")
    assert code == 1
    (error,) = _section(out, "errors")
    assert error.startswith(f"video {corrupt} (sample Ego4D_clips_a1.mp4): does not decode: ")
    assert "Invalid data found when processing input" in error


def test_query_beyond_the_duration_names_sample_query_time_and_duration(broken_root, capsys):
    annotation = broken_root / "ovo_bench_new.json"
    items = json.loads(annotation.read_text())
    items[5]["realtime"] = 25  # STU on COIN/b1.mp4, an 18.5 s video
    items[4]["realtime"] = 18.5  # exactly the end: still inside
    annotation.write_text(json.dumps(items))
    code, out, _ = _validate(capsys, "dataset=ovo_bench", f"dataset.root={broken_root}")
    assert code == 1
    video = broken_root / "src_videos" / "COIN" / "b1.mp4"
    assert _section(out, "errors") == [
        f"sample COIN_b1.mp4, query 5: time 25 s lies outside the video (duration 18.5 s, {video})"
    ]


def test_malformed_annotation_fails_with_the_data_error(broken_root, capsys):
    annotation = broken_root / "ovo_bench_new.json"
    items = json.loads(annotation.read_text())
    items[1]["gt"] = 3
    annotation.write_text(json.dumps(items))
    code, out, _ = _validate(capsys, "dataset=ovo_bench", f"dataset.root={broken_root}")
    assert code == 1
    assert _section(out, "errors") == [
        f"annotation: {annotation}, item 1 (id 1): field 'gt' must index one of the 3 options (0-based), got 3"
    ]
    assert out.splitlines()[0] == "dataset=ovo_bench: 0 samples (videos), 0 queries"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["dataset=nope"],
            "Could not find 'dataset/nope'\n\nAvailable options in 'dataset':\n",
        ),
        (["dataset=ovo_bench", "dataset.colour=red"], "Could not override 'dataset.colour'"),
        (["dataset=ovo_bench", "dataset.tasks=[XYZ]"], "dataset=ovo_bench: tasks ['XYZ'] unknown; choose from EPM"),
    ],
)
def test_config_problems_exit_2_with_the_message_and_no_traceback(capsys, overrides, message):
    code, out, err = _validate(capsys, *overrides)
    assert code == 2 and out == ""
    assert err.startswith("validate: config problem: ") and message in err and "Traceback" not in err


def test_synthetic_benchmark_at_small_knobs_validates(tmp_path, capsys):
    knobs = ["dataset=synthetic", "dataset.videos=2", "dataset.duration_s=30", f"dataset.root={tmp_path}"]
    code, out, _ = _validate(capsys, *knobs)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("dataset=synthetic: 2 samples (videos), ") and "queries per task (no published" in out
    assert [line.split()[0] for line in lines[2:7]] == ["realtime", "clue", "reasoning", "sequential", "proactive"]
    assert "errors: none" in out and "warnings: none" in out


def test_progress_bar_over_more_than_a_few_videos_checks_each_path_once(clean_root, capsys):
    video = str(clean_root / "src_videos" / "COIN" / "b1.mp4")
    samples = [
        StreamSample(f"s{i}", video, 18.5, (Query(f"q{i}", 10.0 + i, "?", "STU", "mcq", ("a", "b")),), {})
        for i in range(5)
    ]  # q4 at 14 s, fine; then one past the end
    samples.append(StreamSample("late", video, 18.5, (Query("q9", 19.0, "?", "STU", "mcq", ("a", "b")),), {}))
    report = check_samples(samples, "ovo_bench", ("STU",), {"STU": 6})
    assert "check videos" in capsys.readouterr().err
    assert (report.samples, report.queries, report.per_task, report.warnings) == (6, 6, {"STU": 6}, [])
    assert report.errors == [f"sample late, query q9: time 19 s lies outside the video (duration 18.5 s, {video})"]
