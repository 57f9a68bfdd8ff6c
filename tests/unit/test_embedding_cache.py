"""The frame-embedding cache: keys that never go stale, atomic entries, corrupt ones recomputed."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from harness.embedding_cache import EmbeddingCache, StreamTokens
from harness.records import Frame


class QuadrantMeans:
    """A small real encoder: the mean colour of each quadrant (P=4, D=3); counts its calls."""

    identity = "quadrant-means-v1"

    def __init__(self) -> None:
        self.frames_encoded = 0

    def encode_frames(self, frames):
        self.frames_encoded += len(frames)
        out = []
        for pixels in frames:
            h, w = pixels.shape[0] // 2, pixels.shape[1] // 2
            quads = [pixels[:h, :w], pixels[:h, w:], pixels[h:, :w], pixels[h:, w:]]
            out.append(torch.tensor(np.stack([q.reshape(-1, 3).mean(0) for q in quads]), dtype=torch.float32))
        return torch.stack(out)

    def encode_text(self, text):
        return torch.ones(len(text.split()), 3)


def _frames(n: int) -> list[Frame]:
    rng = np.random.default_rng(0)
    return [Frame(i, i * 0.5, rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for i in range(n)]


def _play(tokens: StreamTokens, frames: list[Frame]) -> torch.Tensor:
    async def run():
        return torch.stack([await tokens.frame(f) for f in frames])

    return asyncio.run(run())


def test_key_covers_content_sampling_resize_and_encoder(tmp_path):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"one")
    cache = EmbeddingCache(tmp_path / "cache")
    base = cache.key(video, 2.0, 320, "enc-a")
    assert base == cache.key(video, 2.0, 320, "enc-a")
    assert len({base, cache.key(video, 1.0, 320, "enc-a"), cache.key(video, 2.0, 160, "enc-a")}) == 3
    assert cache.key(video, 2.0, 320, "enc-b") != base
    video.write_bytes(b"two")  # same path, other content
    assert cache.key(video, 2.0, 320, "enc-a") != base


def test_second_stream_reuses_every_frame_and_extends_the_prefix(tmp_path):
    cache, encoder, frames = EmbeddingCache(tmp_path), QuadrantMeans(), _frames(10)
    first = StreamTokens(encoder, cache, "k" * 32)
    expected = _play(first, frames[:6])
    first.close()
    assert (cache.counts.reused, cache.counts.computed, encoder.frames_encoded) == (0, 6, 6)

    second = StreamTokens(encoder, cache, "k" * 32)
    got = _play(second, frames)  # 6 from the cache, 4 new
    second.close()
    assert torch.equal(got[:6], expected)
    assert (cache.counts.reused, cache.counts.computed, encoder.frames_encoded) == (6, 10, 10)
    assert cache.load("k" * 32).shape == (10, 4, 3)  # the longer prefix replaced the shorter one

    shorter = StreamTokens(encoder, cache, "k" * 32)
    _play(shorter, frames[:3])
    shorter.close()
    assert cache.load("k" * 32).shape[0] == 10  # never shrinks


def test_a_corrupt_entry_is_dropped_and_recomputed(tmp_path):
    cache, encoder, frames = EmbeddingCache(tmp_path), QuadrantMeans(), _frames(4)
    tokens = StreamTokens(encoder, cache, "c" * 32)
    good = _play(tokens, frames)
    tokens.close()
    (path,) = tmp_path.rglob("*.pt")
    path.write_bytes(path.read_bytes()[:50])
    again = StreamTokens(encoder, cache, "c" * 32)
    assert torch.equal(_play(again, frames), good)
    again.close()
    assert cache.counts.dropped == 1 and encoder.frames_encoded == 8
    assert torch.equal(cache.load("c" * 32), good)


def test_query_tokens_are_encoded_once_per_text(tmp_path):
    tokens = StreamTokens(QuadrantMeans(), None, None)
    first = asyncio.run(tokens.text("a red circle"))
    assert first.shape == (3, 3) and asyncio.run(tokens.text("a red circle")) is first
