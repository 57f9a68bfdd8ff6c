"""Which samples a job runs: shards split samples by a stable hash of their id."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from harness.records import StreamSample


def shard_of(sample_id: str, count: int) -> int:
    """Stable across runs, machines and Python versions (unlike hash())."""
    return int(hashlib.sha1(sample_id.encode()).hexdigest(), 16) % count


def shards_to_run(count: int, index: int | None) -> list[int]:
    return list(range(count)) if index is None else [index]


def by_shard(samples: Sequence[StreamSample], count: int) -> dict[int, list[StreamSample]]:
    out: dict[int, list[StreamSample]] = {i: [] for i in range(count)}
    for sample in samples:
        out[shard_of(sample.id, count)].append(sample)
    return out
