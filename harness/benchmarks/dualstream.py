"""DualStreamBench's five parts on the user's own data: realtime, clue, reasoning, sequential, proactive.

The data is a folder in the layout of `dualstream_format` (datasets/dualstream/README.md); the synthetic
benchmark writes the same layout, so `dataset=dualstream dataset.root=<a synthetic data folder>` reads it too.
`DualStreamRules` is how a query of this layout is asked, parsed and scored; the synthetic benchmark uses the
same rules, so one query gets the same score under either adapter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.benchmarks.base import DATASETS, BadItem
from harness.benchmarks.dualstream_format import LETTERS, PARTS, VOCABULARY, read_folder
from harness.errors import ConfigError
from harness.records import Query, StreamSample, Truth

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
YES_NO_INSTRUCTION = "Answer yes or no."


class DualStreamRules:
    """The prompt, the reply parsers and the scoring of the five parts (exact match, proactive in time)."""

    tasks: tuple[str, ...] = PARTS

    def prompt(self, query: Query) -> str:
        """The question, then for mcq one "A. option" line each and the letter instruction."""
        if query.kind == "mcq":
            options = [f"{LETTERS[i]}. {text}" for i, text in enumerate(query.options)]
            return "\n".join([query.text, *options, MCQ_INSTRUCTION])
        if query.kind == "yes_no":
            return f"{query.text}\n{YES_NO_INSTRUCTION}"
        return query.text

    def fired(self, text: str) -> bool:
        """True when the reply's first yes/no word is "yes"."""
        return first_word(text, ("yes", "no")) == "yes"

    def parse(self, query: Query, text: str) -> str | None:
        """mcq: an option letter; yes_no: "yes"/"no"; proactive: the first word of its options (default: shapes)."""
        if query.kind == "mcq":
            return parse_letter(text, query.options)
        if query.kind == "yes_no":
            return first_word(text, ("yes", "no"))
        return first_word(text, query.options or VOCABULARY, plural=True)

    def score(
        self, query: Query, truth: Truth, parsed: str | None, response_time_s: float | None
    ) -> tuple[float, dict[str, float]]:
        """Exact match; a proactive reply must also come inside the truth's window (inclusive)."""
        content = 1.0 if parsed is not None and parsed == truth.answer else 0.0
        if query.kind != "proactive":
            return content, {}
        low, high = truth.window_s or (math.inf, -math.inf)
        in_time = 1.0 if response_time_s is not None and low <= response_time_s <= high else 0.0
        return in_time * content, {"time": in_time, "content": content}


@dataclass(frozen=True)
class DualStreamConfig:
    name: str = "dualstream"
    root: str = "datasets/dualstream"  # the folder holding all.json and/or shards/; relative to the working dir
    parts: list[str] = field(default_factory=list)  # subset of the five parts; empty: all
    on_bad_item: BadItem = BadItem.fail


@DATASETS.register("dualstream", DualStreamConfig)
class DualStream(DualStreamRules):
    """Adapter of a five-part folder: reads it (all.json or shards), keeps the selected parts."""

    def __init__(self, cfg: DualStreamConfig) -> None:
        unknown = [p for p in cfg.parts if p not in PARTS]
        if unknown:
            raise ConfigError(f"dataset=dualstream: parts {unknown} unknown; choose from {', '.join(PARTS)}")
        self.cfg = cfg
        self.tasks = tuple(p for p in PARTS if p in cfg.parts) if cfg.parts else PARTS  # the selection, in order

    def load(self) -> list[StreamSample]:
        return read_folder(Path(self.cfg.root), self.tasks if self.cfg.parts else ())


def parse_letter(text: str, options: tuple[str, ...]) -> str | None:
    """A leading letter ("B", "(B)", "B. red"), else a unique option text, else any standalone letter."""
    letters = LETTERS[: len(options)]
    lead = re.match(rf"\s*\(?([{letters}])(?:[.:)]|\s*$)", text)
    if lead:
        return lead.group(1)
    named = [i for i, o in enumerate(options) if re.search(rf"\b{re.escape(o)}\b", text, re.IGNORECASE)]
    if len(named) == 1:
        return LETTERS[named[0]]
    loose = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text)
    return loose.group(1) if loose else None


def first_word(text: str, words: tuple[str, ...], plural: bool = False) -> str | None:
    """The first of `words` that occurs as a whole word (case-insensitive), by position, as `words` spells it."""
    suffix = "s?" if plural else ""
    found = re.search(rf"\b({'|'.join(map(re.escape, words))}){suffix}\b", text, re.IGNORECASE)
    if found is None:
        return None
    return next(w for w in words if w.lower() == found.group(1).lower())
