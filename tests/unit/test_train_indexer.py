"""The indexer's training: examples from evidence times, the listwise loss, and the command end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.benchmarks.base import DATASETS
from harness.embedding_cache import EmbeddingCache
from harness.encoders.base import ENCODERS
from harness.errors import ConfigError
from harness.memory.base import MemoryView
from harness.records import Frame
from harness.routers import ROUTERS
from harness.routers.indexer import load_checkpoint
from harness.train_indexer import (
    Example,
    TrainOptions,
    build_examples,
    in_intervals,
    main,
    recall_at_k,
    split_by_sample,
    train,
    train_split_overrides,
)
from harness.video import sample_frames

TINY = ["dataset.videos=2", "dataset.duration_s=30"]
PROMPT = DATASETS.build(DATASETS.parse({"name": "synthetic"})).prompt  # pure: the text routers score


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's waits made a 2 s fit take 90 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_in_intervals_reads_flat_pairs_with_both_ends_included():
    times = torch.tensor([0.0, 1.0, 1.5, 2.0, 3.0, 7.0, 9.0])
    inside = in_intervals(times, (1.0, 2.0, 6.5, 7.0))
    assert inside.tolist() == [False, True, True, True, False, True, False]


def hand_built_examples(n_samples: int = 6, per_sample: int = 12, seed: int = 0) -> list[Example]:
    """Query = one axis; two of 12 candidates show that axis in one of their 3 patches, the others other axes."""
    generator = torch.Generator().manual_seed(seed)
    dim, patches, candidates = 6, 3, 12
    examples = []
    for sample in range(n_samples):
        for index in range(per_sample):
            axis = int(torch.randint(dim, (1,), generator=generator))
            tokens = 0.05 * torch.randn(candidates, patches, dim, generator=generator)
            others = [a for a in range(dim) if a != axis]
            for c in range(candidates):
                tokens[c, :, others[c % len(others)]] += 1.0  # distracting content everywhere
            positives = torch.zeros(candidates, dtype=torch.bool)
            for c in torch.randperm(candidates, generator=generator)[:2].tolist():
                tokens[c, c % patches, axis] += 1.0
                positives[c] = True
            query = torch.nn.functional.one_hot(torch.tensor([axis]), dim).float()
            examples.append(Example(f"video{sample}", f"q{index}", query, tokens, positives))
    return examples


def test_training_on_hand_built_tokens_learns_where_the_evidence_is(one_thread):
    examples = hand_built_examples()
    result = train(examples, TrainOptions(epochs=30, lr=1e-2, batch=4, heads=8, head_dim=16, progress=False))
    losses = result.stats["loss_per_epoch"]
    assert losses[0] > 2.0 and losses[-1] < 0.8  # from about log(12) to near the floor log(2) of 2 positives
    assert result.stats["recall_on"] == "held_out"
    assert result.stats["held_out_samples"] == ["video4", "video5"]  # round(0.25 x 6) = 2 whole videos
    assert result.stats["recall_at_k"]["k"] == 8
    _, held_out = split_by_sample(examples, 0.25)
    with torch.no_grad():
        assert recall_at_k(lambda e: result.model(e.query, e.candidates), held_out, 2) >= 0.9


def test_split_holds_out_whole_videos_and_keeps_one_to_train_on():
    examples = hand_built_examples(n_samples=3, per_sample=2)
    fit, held_out = split_by_sample(examples, 0.9)
    assert {e.sample_id for e in fit} == {"video0"} and {e.sample_id for e in held_out} == {"video1", "video2"}
    assert split_by_sample(examples, 0.0) == (examples, [])
    assert split_by_sample(hand_built_examples(n_samples=1, per_sample=2), 0.5)[1] == []


def test_recall_at_k_counts_positives_in_the_top_k():
    positives = torch.tensor([True, False, True, False, False])
    example = Example("v", "q", torch.zeros(1, 2), torch.zeros(5, 1, 2), positives)
    scores = torch.tensor([0.9, 0.8, 0.1, 0.7, 0.0])
    assert recall_at_k(lambda e: scores, [example], 2) == 0.5  # one of the 2 positives in the top 2
    assert recall_at_k(lambda e: scores, [example], 1) == 1.0  # capped by k
    assert recall_at_k(lambda e: scores, [example], 4) == 1.0


def test_train_split_uses_another_seed_unless_the_command_line_says():
    assert train_split_overrides(["dataset=synthetic"]) == [
        "dataset.seed=1000",
        "dataset.videos=24",
        "dataset=synthetic",
    ]
    assert train_split_overrides(["dataset.seed=7", "dataset.videos=2"]) == ["dataset.seed=7", "dataset.videos=2"]


@pytest.fixture(scope="module")
def tiny_train_split(tmp_path_factory):
    """The real synthetic generator at small knobs, train seed, generated once for this module."""
    root = tmp_path_factory.mktemp("synthetic")
    config = DATASETS.parse({"name": "synthetic", "root": str(root), "seed": 1000, "videos": 2, "duration_s": 30.0})
    return root, DATASETS.build(config).load()


def test_examples_have_every_frame_up_to_the_query_and_the_evidence_frames(tiny_train_split):
    _, samples = tiny_train_split
    encoder = ENCODERS.build(ENCODERS.parse({"name": "patch_color"}))
    examples = build_examples(samples, encoder, PROMPT, fps=2.0, max_side=320, progress=False)
    assert examples
    by_id = {(s.id, q.id): (s, q) for s in samples for q in s.queries}
    for example in examples:
        sample, query = by_id[(example.sample_id, example.query_id)]
        times = [k / 2.0 for k in range(example.candidates.shape[0])]  # frames at 2 fps from t = 0
        assert times[-1] <= query.time_s < times[-1] + 0.5  # every frame on screen up to the query, no later
        evidence = sample.truths[query.id].evidence_s
        expected = [any(a <= t <= b for a, b in zip(evidence[::2], evidence[1::2], strict=True)) for t in times]
        assert example.positives.tolist() == expected and any(expected)
        assert torch.equal(example.query, encoder.encode_text(PROMPT(query)))  # options included
    first = samples[0]
    frames = list(sample_frames(first.video, 2.0, 320))
    one = next(e for e in examples if e.sample_id == first.id)
    encoded = encoder.encode_frames([f.pixels for f in frames[: one.candidates.shape[0]]])
    assert torch.equal(one.candidates, encoded)


class CountingEncoder:
    """The real encoder, counting the frames it is asked to encode."""

    def __init__(self, encoder) -> None:
        self.encoder, self.identity, self.frames = encoder, encoder.identity, 0

    def encode_frames(self, frames):
        self.frames += len(frames)
        return self.encoder.encode_frames(frames)

    def encode_text(self, text):
        return self.encoder.encode_text(text)


def test_examples_reuse_the_embedding_cache_of_the_sweeps(tiny_train_split, tmp_path):
    _, samples = tiny_train_split
    cache = EmbeddingCache(tmp_path / "cache")
    first = CountingEncoder(ENCODERS.build(ENCODERS.parse({"name": "patch_color"})))
    fresh = build_examples(samples[:1], first, PROMPT, 2.0, 320, cache, progress=False)
    assert first.frames == 60  # 30 s at 2 fps, encoded once
    again = CountingEncoder(first.encoder)
    reused = build_examples(samples[:1], again, PROMPT, 2.0, 320, cache, progress=False)
    assert again.frames == 0
    assert all(torch.equal(a.candidates, b.candidates) for a, b in zip(fresh, reused, strict=True))


def test_train_command_lowers_the_loss_and_writes_a_checkpoint_the_router_loads(
    tiny_train_split, tmp_path, capsys, one_thread
):
    root, _ = tiny_train_split
    out = tmp_path / "ckpt" / "indexer.pt"
    overrides = [f"dataset.root={root}", *TINY, "encoder=patch_color"]
    flags = ["--out", str(out), "--epochs", "8", "--lr", "0.01", "--heads", "2", "--head-dim", "8", "--quiet"]
    assert main([*overrides, *flags]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["indexer.pt"]  # no temp file left behind

    checkpoint = load_checkpoint(out)
    losses = checkpoint["train"]["loss_per_epoch"]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert checkpoint["model"] == {"dim": 11, "heads": 2, "head_dim": 8}
    assert checkpoint["dataset"]["config"]["seed"] == 1000  # the train split, not the evaluated seed 0
    encoder = ENCODERS.build(ENCODERS.parse({"name": "patch_color"}))
    assert checkpoint["encoder"]["identity"] == encoder.identity

    router = ROUTERS.build(ROUTERS.parse({"name": "indexer", "checkpoint": str(out), "topk": 3}))
    router.check_encoder(encoder.identity)
    with pytest.raises(ConfigError, match="router.checkpoint"):
        router.check_encoder("clip:other")
    pixels = np.zeros((2, 2, 3), np.uint8)
    tokens = torch.rand(5, 48, 11)
    choice = router.select(
        encoder.encode_text("Is there a red star?"),
        MemoryView(2.0, tuple(Frame(i, i / 2, pixels) for i in range(5)), tokens),
        8,
    )
    assert len(choice.chosen) == 3 and len(choice.scores) == 5


def test_train_command_reports_a_bad_override_without_a_traceback(tmp_path, capsys):
    assert main([f"dataset.root={tmp_path}", "encoder=nope", "--quiet"]) == 2
    assert "encoder" in capsys.readouterr().err
