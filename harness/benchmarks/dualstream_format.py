"""The five-part layout of DualStreamBench on disk: all.json, shards/*.json and task_sets/<part>.json.

One reader and one writer for every folder in this layout: the user's own data (`dataset=dualstream`) and the
synthetic benchmark's generated folders. all.json and the shards are two forms of the same samples (one file, or
files of a fixed number of samples); task sets index each part's queries by id. Where two files can disagree, the
reader checks that they agree. The layout, with an example: datasets/dualstream/README.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from harness.benchmarks.fields import Fields, read_json, show
from harness.benchmarks.synthetic_video import SHAPES
from harness.errors import ConfigError, DataError
from harness.records import Query, StreamSample, Truth

PARTS = ("realtime", "clue", "reasoning", "sequential", "proactive")  # the five parts, in table order
KINDS = ("mcq", "yes_no", "proactive")
LETTERS = "ABCD"  # option letters: an mcq query has 2 to 4 options
VOCABULARY = SHAPES  # what a proactive reply names when its query lists no options of its own
ANNOTATION = "all.json"
SHARDS = "shards"
TASK_SETS = "task_sets"
SHARD_SAMPLES = 100  # samples per shard file the writer makes
README = "datasets/dualstream/README.md"
CORE = ("id", "video", "duration_s", "queries")  # a sample's other fields are kept in its extras


@dataclass(frozen=True)
class Annotation:
    """One file of samples (all.json or a shard): its header and its samples, in file order."""

    path: Path
    benchmark: str
    version: str | int
    samples: tuple[StreamSample, ...]


def read_folder(folder: Path, parts: Sequence[str] = ()) -> list[StreamSample]:
    """The samples of a folder with only the queries of `parts` (empty: all); samples left with none are dropped.

    all.json when present, else the union of shards/*.json; when both are there they must hold the same samples.
    Task sets that are present must list exactly their part's queries; a part is selected through its task set.
    """
    folder = Path(folder)
    annotation, shard_files = folder / ANNOTATION, sorted((folder / SHARDS).glob("*.json"))
    if not annotation.exists() and not shard_files:
        raise DataError(
            f"{folder}: neither {ANNOTATION} nor {SHARDS}/*.json found; put the annotation there "
            f"(or set dataset.root to the folder that holds it), see {README}"
        )
    whole = read_annotation(annotation, folder) if annotation.exists() else None
    sharded = [read_annotation(path, folder) for path in shard_files]
    _check_shards(sharded)
    if whole is not None and sharded:
        _check_agree(whole, sharded)
    samples = list(whole.samples) if whole is not None else [s for shard in sharded for s in shard.samples]
    source = str(annotation) if whole is not None else f"{folder / SHARDS}/*.json"
    if not samples:
        raise DataError(f"{source}: holds no samples; see {README}")
    _check_query_ids(samples, source)
    task_sets = read_task_sets(folder, samples, source)
    return select(samples, parts, task_sets, source)


def read_annotation(path: Path, folder: Path) -> Annotation:
    """Parse one all.json or shard file; a sample's `video` is relative to `folder`, the dataset folder."""
    data = _read_json(path)
    top = Fields(data, str(path))
    benchmark = top.get("benchmark", str)
    version = top.get("version", object)
    if isinstance(version, bool) or not isinstance(version, (str, int)):
        raise top.fail("version", f"must be a string or an integer, got {show(version)}")
    samples, seen = [], {}
    for index, item in enumerate(top.get("samples", list)):
        sample = _read_sample(item, f"{path}, sample {index}", folder)
        if sample.id in seen:
            raise DataError(f"{path}, sample {index}: field 'id' repeats {sample.id!r} (also sample {seen[sample.id]})")
        seen[sample.id] = index
        samples.append(sample)
    return Annotation(Path(path), benchmark, version, tuple(samples))


def read_task_sets(folder: Path, samples: Sequence[StreamSample], source: str) -> dict[str, set[str]]:
    """Query ids of each part that has a task_sets/<part>.json, each checked against the samples."""
    by_id = {q.id: (s.id, q) for s in samples for q in s.queries}
    sample_ids = {s.id for s in samples}
    found: dict[str, set[str]] = {}
    for path in sorted((Path(folder) / TASK_SETS).glob("*.json")):
        if path.stem not in PARTS:
            raise DataError(f"{path}: {path.stem!r} is not a part; task set files are {', '.join(PARTS)} (.json)")
        top = Fields(_read_json(path), str(path))
        part = top.get("part", str)
        if part != path.stem:
            raise top.fail("part", f"must be {path.stem!r}, the file's name, got {part!r}")
        entries = Fields(top.get("samples", dict), f"{path}, field 'samples'")
        listed: set[str] = set()
        for sample_id in entries.item:
            if sample_id not in sample_ids:
                raise DataError(f"{entries.where}: sample {sample_id!r} is not in {source}; remove it or add it there")
            for query_id in entries.get(sample_id, list):
                listed.add(_check_listed(path, sample_id, query_id, by_id, part, listed, source))
        missing = [qid for qid, (_, q) in by_id.items() if q.task == part and qid not in listed]
        if missing:
            sample_id = by_id[missing[0]][0]
            raise DataError(
                f"{path}: field 'samples' lacks query {missing[0]!r} of sample {sample_id!r}, whose task in {source} "
                f"is {part!r} ({len(missing)} missing in all); a task set lists every query of its part"
            )
        found[part] = listed
    return found


def select(
    samples: Sequence[StreamSample], parts: Sequence[str], task_sets: Mapping[str, set[str]], source: str = "the data"
) -> list[StreamSample]:
    """Keep the queries of `parts` (all when empty): a part's task set where present, else its queries' task."""
    if not parts:
        return list(samples)
    keep: set[str] = set()
    for part in parts:
        keep |= task_sets[part] if part in task_sets else {q.id for s in samples for q in s.queries if q.task == part}
    out = []
    for sample in samples:
        queries = tuple(q for q in sample.queries if q.id in keep)
        for query in queries:
            if query.follows is not None and query.follows not in keep:
                followed = next(q for q in sample.queries if q.id == query.follows)
                raise ConfigError(
                    f"dataset.parts={list(parts)}: query {query.id!r} of sample {sample.id!r} follows query "
                    f"{followed.id!r} of part {followed.task!r}, which is left out; add {followed.task!r} to parts"
                )
        if queries:
            truths = {q.id: sample.truths[q.id] for q in queries}
            out.append(StreamSample(sample.id, sample.video, sample.duration_s, queries, truths, sample.extras))
    if not out:
        raise DataError(f"{source}: no queries of parts {list(parts)}; choose parts it holds (dataset.parts)")
    return out


def write_folder(
    out: Path, header: Mapping[str, Any], samples: Sequence[Mapping[str, Any]], shard_samples: int = SHARD_SAMPLES
) -> None:
    """Write samples (in all.json form) as all.json, shards/shard-NNNN.json and task_sets/<part>.json.

    `header` holds at least "benchmark" and "version"; it heads all.json and every shard, before "samples".
    """
    out = Path(out)
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    (out / TASK_SETS).mkdir(exist_ok=True)
    _write_json(out / ANNOTATION, {**header, "samples": list(samples)})
    for number, start in enumerate(range(0, len(samples), shard_samples)):
        chunk = list(samples[start : start + shard_samples])
        _write_json(out / SHARDS / f"shard-{number:04d}.json", {**header, "samples": chunk})
    for part in PARTS:
        grouped = {s["id"]: [q["id"] for q in s["queries"] if q["task"] == part] for s in samples}
        listed = {sample_id: ids for sample_id, ids in grouped.items() if ids}
        _write_json(out / TASK_SETS / f"{part}.json", {"part": part, "samples": listed})


def _check_listed(
    path: Path, sample_id: str, query_id: Any, by_id: Mapping[str, tuple[str, Query]], part: str, listed: set, source
) -> str:
    where = f"{path}, field 'samples', sample {sample_id!r}"
    if not isinstance(query_id, str):
        raise DataError(f"{where}: query ids must be strings, got {show(query_id)}")
    if query_id in listed:
        raise DataError(f"{where}: query {query_id!r} is listed twice")
    owner, query = by_id.get(query_id, (None, None))
    if owner != sample_id:
        held = f"belongs to sample {owner!r}" if owner else f"is not in {source}"
        raise DataError(f"{where}: query {query_id!r} {held}; list each query under its own sample")
    if query.task != part:
        raise DataError(
            f"{where}: query {query_id!r} has task {query.task!r} in {source} (field 'task'), not {part!r}; "
            f"move it to task_sets/{query.task}.json or correct its task"
        )
    return query_id


def _check_shards(shards: Sequence[Annotation]) -> None:
    """The shards share one header, and no sample id is in two of them."""
    owners: dict[str, Path] = {}
    for shard in shards:
        for key in ("benchmark", "version"):
            if getattr(shard, key) != getattr(shards[0], key):
                raise DataError(
                    f"{shard.path} and {shards[0].path}: field {key!r} differs ({show(getattr(shard, key))} vs "
                    f"{show(getattr(shards[0], key))}); the shards of one dataset share it"
                )
        for sample in shard.samples:
            if sample.id in owners:
                raise DataError(
                    f"{shard.path} and {owners[sample.id]}: sample {sample.id!r} is in both; "
                    "each sample belongs to exactly one shard"
                )
            owners[sample.id] = shard.path


def _check_agree(whole: Annotation, shards: Sequence[Annotation]) -> None:
    """all.json and the shards hold the same header and the same samples (order aside)."""
    fix = f"rewrite one from the other, or delete one of them ({ANNOTATION} or {SHARDS}/)"
    for key in ("benchmark", "version"):
        if getattr(whole, key) != getattr(shards[0], key):
            raise DataError(
                f"{whole.path} and {shards[0].path}: field {key!r} differs ({show(getattr(whole, key))} vs "
                f"{show(getattr(shards[0], key))}); {fix}"
            )
    in_shards = {s.id: (s, shard.path) for shard in shards for s in shard.samples}
    for sample in whole.samples:
        if sample.id not in in_shards:
            raise DataError(f"{whole.path}: sample {sample.id!r} is in no file of {whole.path.parent / SHARDS}/; {fix}")
        other, path = in_shards.pop(sample.id)
        difference = _difference(sample, other)
        if difference:
            raise DataError(f"{whole.path} and {path}: sample {sample.id!r} differs in {difference}; {fix}")
    if in_shards:
        sample_id, (_, path) = next(iter(in_shards.items()))
        raise DataError(f"{path}: sample {sample_id!r} is not in {whole.path}; {fix}")


def _difference(a: StreamSample, b: StreamSample) -> str | None:
    """Where two readings of one sample differ first, as "field 'x'" or "query 'q', field 'x'"."""
    for key in ("video", "duration_s"):
        if getattr(a, key) != getattr(b, key):
            return f"field {key!r}"
    for key in sorted(a.extras.keys() | b.extras.keys()):
        if key not in a.extras or key not in b.extras or a.extras[key] != b.extras[key]:
            return f"field {key!r}"
    if [q.id for q in a.queries] != [q.id for q in b.queries]:
        return "field 'queries' (not the same query ids in the same order)"
    for qa, qb in zip(a.queries, b.queries, strict=True):
        for left, right in ((qa, qb), (a.truths[qa.id], b.truths[qb.id])):
            for f in fields(left):
                if getattr(left, f.name) != getattr(right, f.name):
                    return f"query {qa.id!r}, field {f.name!r}"
    return None


def _check_query_ids(samples: Iterable[StreamSample], source: str) -> None:
    """Query ids are unique across the dataset: a job's records are keyed by them."""
    owners: dict[str, str] = {}
    for sample in samples:
        for query in sample.queries:
            if query.id in owners:
                raise DataError(
                    f"{source}: query id {query.id!r} is in samples {owners[query.id]!r} and {sample.id!r}; "
                    "query ids must be unique across the dataset (e.g. prefix them with the sample id)"
                )
            owners[query.id] = sample.id


def _read_json(path: Path) -> Any:
    return read_json(path, f"file not found; see {README}")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1))


def _read_sample(item: Any, where: str, folder: Path) -> StreamSample:
    sample_id = Fields(item, where).get("id", str)
    fields_ = Fields(item, f"{where} (id {sample_id!r})")
    duration = fields_.get("duration_s", float)
    if duration <= 0:
        raise fields_.fail("duration_s", f"must be > 0 seconds, got {duration}")
    video = fields_.get("video", str)
    queries: list[Query] = []
    truths: dict[str, Truth] = {}
    for i, raw in enumerate(fields_.get("queries", list)):
        query, truth = _read_query(raw, f"{fields_.where}, query {i}", duration, queries)
        if query.id in truths:
            raise Fields(raw, f"{fields_.where}, query {i}").fail("id", f"repeats {query.id!r}")
        queries.append(query)
        truths[query.id] = truth
    extras = {k: v for k, v in item.items() if k not in CORE}
    return StreamSample(sample_id, str(folder / video), duration, tuple(queries), truths, extras)


def _read_query(raw: Any, where: str, duration: float, earlier: list[Query]) -> tuple[Query, Truth]:
    query_id = Fields(raw, where).get("id", str)
    f = Fields(raw, f"{where} (id {query_id!r})")
    time_s, task, kind = f.get("time_s", float), f.get("task", str), f.get("kind", str)
    if not 0.0 <= time_s < duration:
        raise f.fail("time_s", f"must lie in [0, {duration}) (the video), got {time_s}")
    if task not in PARTS:
        raise f.fail("task", f"must be one of {', '.join(PARTS)}, got {task!r}")
    if kind not in KINDS:
        raise f.fail("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    options = tuple(f.get("options", list))
    if not all(isinstance(o, str) for o in options):
        raise f.fail("options", "must be a list of strings")
    answer = f.get("answer", str)
    if kind == "mcq" and (not 2 <= len(options) <= len(LETTERS) or answer not in LETTERS[: len(options)]):
        raise f.fail("answer", f"must be the letter of one of {len(options)} options (2 to 4), got {answer!r}")
    if kind == "yes_no" and answer not in ("yes", "no"):
        raise f.fail("answer", f"must be 'yes' or 'no', got {answer!r}")
    if kind == "proactive" and answer not in (options or VOCABULARY):
        named = "one of its options" if options else f"one of {', '.join(VOCABULARY)} (the query lists no options)"
        raise f.fail("answer", f"must be {named}, got {answer!r}")
    follows = f.get("follows", str, optional=True)
    if follows is not None and follows not in [q.id for q in earlier]:
        raise f.fail("follows", f"must name an earlier query of the sample, got {follows!r}")
    trigger = f.get("trigger", str, optional=True)
    window = _pair(f, "window_s", optional=kind != "proactive")
    if kind == "proactive" and trigger is None:
        raise f.fail("trigger", "is required for a proactive query")
    evidence = f.get("evidence_s", list, optional=True) or []
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in evidence):
        raise f.fail("evidence_s", f"must be a list of numbers, got {show(evidence)}")
    query = Query(query_id, time_s, f.get("text", str), task, kind, options, follows, trigger)
    return query, Truth(query_id, answer, tuple(float(x) for x in evidence), window)


def _pair(f: Fields, key: str, optional: bool) -> tuple[float, float] | None:
    value = f.get(key, list, optional=optional)
    if value is None:
        return None
    if len(value) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise f.fail(key, f"must be [start, end] in seconds, got {show(value)}")
    if value[0] > value[1]:
        raise f.fail(key, f"must have start <= end, got {show(value)}")
    return float(value[0]), float(value[1])
