"""Frame embeddings on disk, shared by every job of a sweep (and across sweeps).

An entry holds the tokens [N, P, D] of the first N stream frames of one video, keyed by the
video's content hash, the sampling spec (fps), the resize spec (max side) and the encoder's
identity (name, weights hash, dtype): change any of them and the key changes, so an entry is
never stale. Writes are atomic (temp file + rename), so concurrent jobs share entries safely; an
entry that does not load is dropped and recomputed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.encoders.base import Encoder
from harness.hashing import content_hash
from harness.records import Frame

log = logging.getLogger(__name__)


@dataclass
class CacheCounts:
    """Frames whose tokens came from disk vs were computed, for the manifest and the log."""

    reused: int = 0
    computed: int = 0
    dropped: int = 0  # corrupt entries removed


class EmbeddingCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.counts = CacheCounts()
        self._lock = threading.Lock()

    def key(self, video: str | Path, fps: float, max_side: int, encoder_identity: str) -> str:
        spec = {"video": content_hash(video), "fps": float(fps), "max_side": int(max_side), "encoder": encoder_identity}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]

    def load(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            tokens = entry["tokens"]
            if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3 or entry.get("key") != key:
                raise ValueError("not a [N, P, D] token tensor for this key")
            return tokens
        except Exception as e:  # any unreadable entry: drop it, the frames get encoded again
            log.warning("embedding cache: dropping corrupt entry %s (%s)", path, e)
            path.unlink(missing_ok=True)
            with self._lock:
                self.counts.dropped += 1
            return None

    def store(self, key: str, tokens: torch.Tensor) -> None:
        """Keep the longest prefix: an entry is only replaced by one covering more frames."""
        current = self.load(key)
        if current is not None and current.shape[0] >= tokens.shape[0]:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        torch.save({"key": key, "tokens": tokens.contiguous()}, tmp)
        os.replace(tmp, path)

    def count(self, reused: int = 0, computed: int = 0) -> None:
        with self._lock:
            self.counts.reused += reused
            self.counts.computed += computed

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"


class StreamTokens:
    """Tokens of one stream's frames (from the cache where present, else encoded) and of its queries."""

    def __init__(self, encoder: Encoder, cache: EmbeddingCache | None, key: str | None) -> None:
        self._encoder = encoder
        self._cache = cache
        self._key = key
        self._cached = cache.load(key) if cache is not None and key is not None else None
        self._frames: list[torch.Tensor] = []  # tokens of frames 0..n-1 of the stream, in order
        self._computed = 0
        self._texts: dict[str, torch.Tensor] = {}

    async def frame(self, frame: Frame) -> torch.Tensor:
        """[P, D] tokens of the next stream frame (frames arrive in order, each exactly once)."""
        position = len(self._frames)
        if self._cached is not None and position < self._cached.shape[0]:
            tokens = self._cached[position]
        else:
            tokens = (await asyncio.to_thread(self._encoder.encode_frames, [frame.pixels]))[0]
            self._computed += 1
        self._frames.append(tokens)
        return tokens

    async def text(self, text: str) -> torch.Tensor:
        if text not in self._texts:
            self._texts[text] = await asyncio.to_thread(self._encoder.encode_text, text)
        return self._texts[text]

    def close(self) -> None:
        """Count reuse and write the (longer) prefix back."""
        if self._cache is None:
            return
        self._cache.count(reused=len(self._frames) - self._computed, computed=self._computed)
        if self._computed and self._key is not None:
            self._cache.store(self._key, torch.stack(self._frames))
