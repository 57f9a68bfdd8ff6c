"""What a benchmark adapter provides: samples, the prompt it asks, and its official parsing and scoring."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from harness.records import Query, StreamSample, Truth
from harness.registry import Registry


class BadItem(str, Enum):
    """What a sweep does with items that fail the pre-sweep checks (missing video, time past its end)."""

    fail = "fail"  # stop before any work, listing them
    skip = "skip"  # leave them out; the job's manifest and summary list what was skipped


@dataclass(frozen=True)
class PromptsConfig:
    """Where prompt templates come from: our own wording, or the official strings of a checkout."""

    official_dir: str = ""  # the user's checkout of the benchmark's repository; read as text, never run


class Benchmark(Protocol):
    tasks: tuple[str, ...]  # task families in table order

    def load(self) -> list[StreamSample]:
        """Read (or on first use generate) the data; malformed input raises DataError."""
        ...

    def prompt(self, query: Query) -> str:
        """The text the model is asked, options included."""
        ...

    def fired(self, text: str) -> bool:
        """Whether a reply to a proactive trigger question means "yes, now"."""
        ...

    def parse(self, query: Query, text: str) -> str | None:
        """The answer in the form the scorer compares (e.g. an option letter); None if unreadable."""
        ...

    def score(
        self, query: Query, truth: Truth, parsed: str | None, response_time_s: float | None
    ) -> tuple[float, dict[str, float]]:
        """Score in [0, 1] and named sub-scores (proactive: time and content)."""
        ...


class RawTextAnswers:
    """For a benchmark without proactive queries whose official rules (or judge) read the raw response."""

    def fired(self, text: str) -> bool:
        return False

    def parse(self, query: Query, text: str) -> str | None:
        return text


DATASETS: Registry[Benchmark] = Registry("dataset")
