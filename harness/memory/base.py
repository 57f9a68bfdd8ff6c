"""Streaming memory: what a stream keeps of its past for S2. State is per stream.

A memory offers the router *candidates* (`MemoryView.frames`, with their tokens when it keeps
tokens: frames for a window, one entry per cluster for a key-frame memory) and turns the router's
choice back into the frames S2 is shown (`expand`). A text memory also keeps notes (captions S1
wrote while the stream played) and retrieves the ones that match a query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from harness.records import Frame
from harness.registry import Registry


@dataclass(frozen=True)
class Note:
    """A caption of the stream around time_s, written by S1."""

    time_s: float
    text: str


@dataclass(frozen=True)
class FrameChoice:
    """The router's pick over a view's candidates: `chosen` first, then `neighbours` (lower priority)."""

    chosen: tuple[int, ...]
    neighbours: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()  # one per candidate, when the router scores them


@dataclass(frozen=True)
class MemoryView:
    """A read-only snapshot at now_s: candidates in time order, each with time_s <= now_s."""

    now_s: float
    frames: tuple[Frame, ...]
    tokens: torch.Tensor | None = None  # [N, P, D], one row per candidate; None if the memory keeps none
    notes: tuple[Note, ...] = ()  # text memory retrieved for the query, in time order

    def times_s(self) -> tuple[float, ...]:
        return tuple(f.time_s for f in self.frames)

    def since(self, start_s: float) -> MemoryView:
        """The view without candidates and notes before start_s (a benchmark's official span start)."""
        keep = [i for i, f in enumerate(self.frames) if f.time_s >= start_s - 1e-6]
        if len(keep) == len(self.frames) and all(n.time_s >= start_s for n in self.notes):
            return self
        tokens = None if self.tokens is None else self.tokens[keep]
        notes = tuple(n for n in self.notes if n.time_s >= start_s)
        return MemoryView(self.now_s, tuple(self.frames[i] for i in keep), tokens, notes)


@dataclass(frozen=True)
class MemoryUsage:
    """What a memory holds now; recorded with every answer so analysis can plot memory growth."""

    frames: int  # frames kept (pixels)
    tokens: int  # visual tokens kept (frames x tokens per frame, merged embeddings included)
    bytes: int  # pixels + token embeddings + note text
    notes: int = 0


class Memory(Protocol):
    needs_tokens: bool  # the memory's own logic needs frame tokens (the job then runs the encoder)
    note_every_s: float | None  # a text memory wants a caption of the stream this often; None: never

    def ingest(self, frame: Frame, tokens: torch.Tensor | None) -> None:
        """A new frame of the stream, with its [P, D] tokens whenever the job computes them
        (for the memory or for the router); a memory keeps them so the router can score candidates."""
        ...

    def add_note(self, note: Note) -> None: ...

    def view(self, now_s: float, query_text: str) -> MemoryView:
        """Candidates for a query at now_s; never anything from after now_s."""
        ...

    def expand(self, view: MemoryView, choice: FrameChoice, max_frames: int) -> tuple[Frame, ...]:
        """The frames S2 is shown for `choice`, in time order, at most max_frames."""
        ...

    def usage(self) -> MemoryUsage: ...


MEMORIES: Registry[Memory] = Registry("memory")


def expand_frames(view: MemoryView, choice: FrameChoice, max_frames: int) -> tuple[Frame, ...]:
    """The usual expansion when candidates are frames: chosen first, then neighbours, capped, in time order."""
    picked: list[int] = []
    for index in (*choice.chosen, *choice.neighbours):
        if index not in picked and len(picked) < max_frames:
            picked.append(index)
    return tuple(view.frames[i] for i in sorted(picked))


def frame_bytes(frame: Frame) -> int:
    return int(frame.pixels.nbytes)


def tokens_bytes(tokens: torch.Tensor | None) -> int:
    return 0 if tokens is None else tokens.element_size() * tokens.nelement()


def stack(tokens: Sequence[torch.Tensor]) -> torch.Tensor | None:
    return torch.stack(list(tokens)) if tokens else None
