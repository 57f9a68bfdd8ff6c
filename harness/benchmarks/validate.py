"""Check a benchmark's data before a sweep spends hours on it: every video decodes, every query time lies
inside its video, and the counts per task match the published ones.

Pure functions returning a `Report`; `python -m harness.benchmarks validate` composes the config, runs them
and prints the report. Errors are what would break or silently falsify a run (a missing or corrupt video, a
query past the end, a malformed annotation); warnings are what may be intended (a subset of the tasks).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import av
from tqdm import tqdm

from harness.benchmarks.base import BadItem, Benchmark
from harness.errors import DataError
from harness.records import StreamSample

CAP = 20  # lines printed per kind (errors, warnings) before "... and N more"
PROGRESS_FROM = 4  # a progress bar over the videos from this many on
TOLERANCE_S = 1e-6  # a time this far past the duration is still inside (float round-off)


@dataclass(frozen=True)
class VideoCheck:
    """What one video file says about itself: its duration, or why it cannot be used."""

    path: str
    duration_s: float | None = None  # None: unknown (no container or stream duration)
    error: str | None = None  # the file is missing or does not decode


@dataclass
class Report:
    """Totals, then one line per problem: errors fail the validation, warnings do not."""

    dataset: str
    samples: int = 0
    queries: int = 0
    per_task: dict[str, int] = field(default_factory=dict)  # queries per `query.task`, table order
    published: Mapping[str, int] | None = None  # the adapter's PUBLISHED_COUNTS, if it has them
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self, cap: int = CAP) -> list[str]:
        """The printed report: totals, per-task counts, then errors and warnings capped at `cap` lines each."""
        out = [f"dataset={self.dataset}: {self.samples} samples (videos), {self.queries} queries"]
        if self.per_task:
            out.append("queries per task:" if self.published else "queries per task (no published counts):")
            width = max(len(task) for task in self.per_task)
            for task, count in self.per_task.items():
                known = self.published.get(task) if self.published else None
                out.append(f"  {task:<{width}} {count:>6}" + (f"  (published {known})" if known is not None else ""))
        for kind, items in (("errors", self.errors), ("warnings", self.warnings)):
            out.append(f"{kind}: {len(items) or 'none'}")
            out += [f"  {line}" for line in items[:cap]]
            if len(items) > cap:
                out.append(f"  ... and {len(items) - cap} more")
        verdict = "FAILED" if self.errors else "OK"
        out.append(f"{verdict}: {len(self.errors)} errors, {len(self.warnings)} warnings")
        return out


def validate(benchmark: Benchmark, dataset: str, progress: bool = True) -> Report:
    """Load the benchmark and check its samples; a malformed annotation is the report's one error."""
    published = published_counts(benchmark)
    if published is not None:  # a task subset is compared only where it was selected
        published = {task: n for task, n in published.items() if task in benchmark.tasks}
    try:
        samples = benchmark.load()
    except DataError as e:
        return Report(dataset, published=published, errors=[f"annotation: {e}"])
    return check_samples(samples, dataset, benchmark.tasks, published, progress)


def check_samples(
    samples: Sequence[StreamSample],
    dataset: str,
    tasks: Sequence[str] = (),
    published: Mapping[str, int] | None = None,
    progress: bool = True,
) -> Report:
    """Every video (once per distinct path), every query time against its video, the counts per task."""
    per_task = count_tasks(samples, tasks)
    report = Report(dataset, len(samples), sum(per_task.values()), per_task, published)
    problems, report.warnings = find_problems(samples, progress)
    report.errors = [p.text for p in problems]
    if published is not None:
        report.warnings += compare_counts(per_task, published)
    return report


@dataclass(frozen=True)
class Problem:
    """An item a run cannot use as it is: a whole sample (its video), or one query of it."""

    sample_id: str
    query_id: str | None  # None: the sample's video is unusable, so all its queries are
    text: str


def find_problems(samples: Sequence[StreamSample], progress: bool = True) -> tuple[list[Problem], list[str]]:
    """Problems (missing or undecodable videos, query times outside their video) and warnings (no duration)."""
    problems: list[Problem] = []
    warnings: list[str] = []
    videos: dict[str, VideoCheck] = {}
    bar = tqdm(samples, desc="check videos", unit="video", disable=not progress or len(samples) < PROGRESS_FROM)
    for sample in bar:
        video = videos.get(sample.video)
        if video is None:
            video = videos[sample.video] = check_video(sample.video)
            if video.duration_s is None and not video.error:
                warnings.append(f"video {video.path} (sample {sample.id}): no duration; times not checked")
        if video.error:
            problems.append(Problem(sample.id, None, f"video {video.path} (sample {sample.id}): {video.error}"))
        elif video.duration_s is not None:
            problems += check_times(sample, video.duration_s)
    return problems, warnings


def screen(
    samples: Sequence[StreamSample], policy: BadItem, dataset: str, progress: bool = True
) -> tuple[list[StreamSample], list[Problem]]:
    """The pre-sweep check: stop on bad items (policy fail), or run without them (skip) and say which."""
    problems, _ = find_problems(samples, progress)
    if not problems:
        return list(samples), []
    if policy == BadItem.fail:
        shown = "\n  ".join(p.text for p in problems[:CAP])
        more = f"\n  ... and {len(problems) - CAP} more" if len(problems) > CAP else ""
        raise DataError(
            f"dataset={dataset}: {len(problems)} bad items, found before any work:\n  {shown}{more}\n"
            f"Fix the data (`python -m harness.benchmarks validate dataset={dataset}` lists everything), or run "
            "without them: dataset.on_bad_item=skip (they are listed in the job's manifest.json)"
        )
    bad_samples = {p.sample_id for p in problems if p.query_id is None}
    bad_queries = {p.query_id for p in problems if p.query_id is not None}
    kept = []
    for sample in samples:
        queries = tuple(q for q in sample.queries if q.id not in bad_queries)
        if sample.id not in bad_samples and queries:
            kept.append(dataclasses.replace(sample, queries=queries))
    return kept, problems


def check_video(path: str) -> VideoCheck:
    """Open the file with PyAV, decode its first frame and read its duration (container, else stream)."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return VideoCheck(path, error="no video stream")
            stream = container.streams.video[0]
            next(container.decode(stream))
            if container.duration:
                return VideoCheck(path, container.duration / av.time_base)
            if stream.duration and stream.time_base:
                return VideoCheck(path, float(stream.duration * stream.time_base))
            return VideoCheck(path)
    except FileNotFoundError:
        return VideoCheck(path, error="missing (no such file)")
    except StopIteration:
        return VideoCheck(path, error="does not decode: no frame")
    except (av.FFmpegError, OSError) as e:
        return VideoCheck(path, error=f"does not decode: {e}")


def check_times(sample: StreamSample, duration_s: float) -> list[Problem]:
    """One problem per query whose time (or official clip end) lies outside [0, duration]."""
    problems = []
    for query in sample.queries:
        for label, time_s in (("time", query.time_s), ("clip_end_s", query.clip_end_s)):
            if time_s is not None and not 0.0 <= time_s <= duration_s + TOLERANCE_S:
                text = (
                    f"sample {sample.id}, query {query.id}: {label} {time_s:g} s lies outside the video "
                    f"(duration {duration_s:g} s, {sample.video})"
                )
                problems.append(Problem(sample.id, query.id, text))
                break
    return problems


def count_tasks(samples: Iterable[StreamSample], tasks: Sequence[str] = ()) -> dict[str, int]:
    """Queries per task: the adapter's tasks in table order (zeros included), then any other task found."""
    found = Counter(query.task for sample in samples for query in sample.queries)
    return {task: found[task] for task in [*tasks, *sorted(set(found) - set(tasks))]}


def compare_counts(per_task: Mapping[str, int], published: Mapping[str, int]) -> list[str]:
    """One warning per task whose count differs from the published one (fine when running a subset)."""
    warnings = []
    for task in [*published, *(t for t in per_task if t not in published)]:
        have, expected = per_task.get(task, 0), published.get(task)
        if expected is None:
            warnings.append(f"task {task}: {have} queries, not in the published counts")
        elif have != expected:
            warnings.append(f"task {task}: {have} queries, published {expected} ({have - expected:+d})")
    return warnings


def published_counts(benchmark: Benchmark) -> Mapping[str, int] | None:
    """`PUBLISHED_COUNTS` of the adapter's module (task -> queries of the full benchmark), if it has one."""
    module = importlib.import_module(type(benchmark).__module__)
    return getattr(module, "PUBLISHED_COUNTS", None)
