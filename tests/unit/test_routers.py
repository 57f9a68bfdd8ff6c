"""Scoring routers on hand-built token tensors whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.errors import ConfigError
from harness.memory.base import MemoryView
from harness.records import Frame
from harness.routers import ROUTERS
from harness.routers import indexer as indexer_module
from harness.routers.indexer import TRAIN_COMMAND, LightningIndexer, save_checkpoint
from harness.routers.scoring import Mask, ScoringConfig, choose

D = 8


def unit(*axes: int, weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """A D-vector along the given basis axes (optionally weighted)."""
    vector = torch.zeros(D)
    for axis, weight in zip(axes, weights or (1.0,) * len(axes), strict=True):
        vector[axis] = weight
    return vector


def view(tokens: torch.Tensor | None, n: int | None = None) -> MemoryView:
    n = tokens.shape[0] if n is None else n
    frames = tuple(Frame(i, float(i), np.zeros((2, 2, 3), np.uint8)) for i in range(n))
    return MemoryView(now_s=float(n), frames=frames, tokens=tokens)


def router(name: str, **options):
    return ROUTERS.build(ROUTERS.parse({"name": name, **options}))


# frame 0 holds the query direction e0 in one patch only, among strong other content;
# frame 1 is 0.6 e0 + 0.8 e4 in every patch; frame 2 has nothing of e0
DETAIL_IN_ONE_PATCH = torch.stack(
    [
        torch.stack([unit(0), unit(1), unit(2), unit(3)]),
        torch.stack([unit(0, 4, weights=(0.6, 0.8))] * 4),
        torch.stack([unit(5)] * 4),
    ]
)
QUERY = unit(0).unsqueeze(0) * 3.0  # [S=1, D]; the scale must not matter


def test_fine_finds_a_detail_in_one_patch_that_coarse_averages_away():
    fine = router("cos_sim_fine").select(QUERY, view(DETAIL_IN_ONE_PATCH), max_frames=1)
    coarse = router("cos_sim_coarse").select(QUERY, view(DETAIL_IN_ONE_PATCH), max_frames=1)
    assert fine.chosen == (0,)
    assert fine.scores == pytest.approx((1.0, 0.6, 0.0))  # max over patches of the cosine
    assert coarse.chosen == (1,)
    assert coarse.scores == pytest.approx((0.5, 0.6, 0.0))  # cos(e0, mean of e0..e3) = 0.25 / 0.5


def test_fine_averages_the_best_patch_over_query_tokens():
    query = torch.stack([unit(0), unit(5)])  # frame 0 matches token 1 fully, frame 2 token 2 fully
    choice = router("cos_sim_fine", topk=3).select(query, view(DETAIL_IN_ONE_PATCH), max_frames=8)
    assert choice.scores == pytest.approx((0.5, 0.3, 0.5))
    assert choice.chosen == (2, 0, 1)  # a tie goes to the more recent candidate


def test_cross_attn_scores_differ_sum_to_one_and_follow_the_temperature():
    choice = router("cross_attn", topk=1).select(QUERY, view(DETAIL_IN_ONE_PATCH), max_frames=8)
    scores = torch.tensor(choice.scores)
    assert scores.sum().item() == pytest.approx(1.0)
    assert len(set(choice.scores)) == 3
    assert choice.chosen == (0,)  # at 0.05 the one patch at cos 1.0 outweighs four at 0.6
    # warm: 4 exp(0.6 / T) > exp(1 / T) once T > 0.4 / ln 4, so four good patches win
    warm = router("cross_attn", topk=1, attn_temperature=0.5).select(QUERY, view(DETAIL_IN_ONE_PATCH), 8)
    assert warm.chosen == (1,)
    # the published per-frame softmax (Wencong50714/streaming src/router.py) scores every frame 1: fixed here
    logits = torch.einsum("sd,npd->nps", torch.nn.functional.normalize(QUERY, dim=-1), DETAIL_IN_ONE_PATCH)
    published = torch.softmax(logits / D**0.5, dim=1).mean(dim=-1).sum(dim=1)
    assert torch.allclose(published, torch.ones(3))


def test_cross_attn_mass_is_a_softmax_over_all_candidate_tokens():
    query = torch.stack([unit(0), unit(1)])
    tokens = torch.randn(5, 3, D, generator=torch.Generator().manual_seed(0))
    scores = torch.tensor(router("cross_attn", attn_temperature=0.2).select(query, view(tokens), 8).scores)
    cosines = torch.nn.functional.cosine_similarity(tokens[:, :, None, :], query[None, None], dim=-1)  # [N, P, S]
    expected = torch.stack(
        [torch.softmax(cosines[:, :, s].flatten() / 0.2, dim=0).view(5, 3).sum(dim=1) for s in range(2)]
    ).mean(dim=0)
    assert torch.allclose(scores, expected, atol=1e-6)


def test_k_is_capped_by_topk_max_frames_and_the_candidates():
    tokens = torch.stack([torch.stack([unit(0, 1, weights=(1.0, 0.1 * i))] * 2) for i in range(10)])  # best first
    fine = router("cos_sim_fine", topk=4)
    assert fine.select(QUERY, view(tokens), max_frames=16).chosen == (0, 1, 2, 3)
    assert fine.select(QUERY, view(tokens), max_frames=2).chosen == (0, 1)
    assert fine.select(QUERY, view(tokens[:3]), max_frames=16).chosen == (0, 1, 2)  # N <= k: all of them
    assert fine.select(QUERY, view(tokens), max_frames=0).chosen == ()


@pytest.mark.parametrize("name", ["cos_sim_coarse", "cos_sim_fine", "cross_attn"])
def test_empty_memory_gives_an_empty_choice(name):
    assert router(name).select(QUERY, view(None, n=4), 8).chosen == ()
    assert router(name).select(QUERY, view(torch.zeros(0, 4, D)), 8).chosen == ()


def test_neighbours_are_the_unchosen_plus_minus_one_candidates_in_priority_order():
    scores = torch.tensor([0.9, 0.1, 0.2, 1.0, 0.3, 0.0])
    choice = choose(scores, 8, ScoringConfig(topk=2, neighbours=True))
    assert choice.chosen == (3, 0)
    assert choice.neighbours == (2, 4, 1)
    assert choose(scores, 8, ScoringConfig(topk=2)).neighbours == ()
    adjacent = choose(torch.tensor([1.0, 0.9, 0.0]), 8, ScoringConfig(topk=2, neighbours=True))
    assert adjacent.chosen == (0, 1) and adjacent.neighbours == (2,)


def test_neighbours_option_reaches_the_router():
    choice = router("cos_sim_fine", topk=1, neighbours=True).select(QUERY, view(DETAIL_IN_ONE_PATCH), 8)
    assert choice.chosen == (0,) and choice.neighbours == (1,)


def test_sample_mask_is_deterministic_distinct_and_seeded():
    scores = torch.linspace(0, 1, 50)
    options = ScoringConfig(topk=8, mask=Mask.sample, temperature=1.0, seed=3)
    first, again = choose(scores, 16, options), choose(scores, 16, options)
    assert first.chosen == again.chosen
    assert len(set(first.chosen)) == 8
    assert list(first.chosen) == sorted(first.chosen, key=lambda i: -scores[i])  # best first
    others = {
        choose(scores, 16, ScoringConfig(topk=8, mask=Mask.sample, temperature=1.0, seed=s)).chosen for s in range(5)
    }
    assert len(others) > 1
    # a cold softmax is the top-k; k >= N takes every candidate
    cold = ScoringConfig(topk=8, mask=Mask.sample, temperature=1e-4)
    assert choose(scores, 16, cold).chosen == tuple(range(49, 41, -1))
    assert sorted(choose(scores[:5], 16, options).chosen) == [0, 1, 2, 3, 4]


def test_sample_mask_draws_the_first_pick_from_the_softmax():
    scores = torch.tensor([0.0, 0.1, 0.2, 0.3])
    probabilities = torch.softmax(scores / 0.1, dim=0)
    counts = torch.zeros(4)
    for seed in range(4000):
        counts[choose(scores, 1, ScoringConfig(topk=1, mask=Mask.sample, seed=seed)).chosen[0]] += 1
    assert torch.allclose(counts / 4000, probabilities, atol=0.03)


def test_sample_mask_survives_probabilities_that_underflow():
    scores = torch.tensor([0.0, 1000.0, -1000.0, 5.0])
    choice = choose(scores, 8, ScoringConfig(topk=3, mask=Mask.sample, temperature=0.01))
    assert choice.chosen[0] == 1 and len(set(choice.chosen)) == 3


def test_bad_options_fail_with_the_key():
    with pytest.raises(ConfigError, match="router.topk"):
        router("cos_sim_fine", topk=0)
    with pytest.raises(ConfigError, match="router.attn_temperature"):
        router("cross_attn", attn_temperature=0.0)
    with pytest.raises(ConfigError, match="topk, sample"):
        ROUTERS.parse({"name": "cos_sim_fine", "mask": "samples"})


def test_mismatched_query_and_memory_dims_are_refused():
    with pytest.raises(ValueError, match="D=4"):
        router("cos_sim_fine").select(torch.ones(1, 4), view(DETAIL_IN_ONE_PATCH), 8)


# --- indexer -------------------------------------------------------------------------------------


def reference_indexer_scores(model: LightningIndexer, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The indexer's formula written out with loops, for comparison."""
    heads, head_dim = model.heads, model.head_dim
    n, p, _ = tokens.shape
    scores = torch.zeros(n)
    with torch.no_grad():
        for i in range(n):
            per_query_token = []
            for s in range(query.shape[0]):
                q = model.query_proj(query[s]).view(heads, head_dim)
                w = model.head_weights(query[s]) / (heads * head_dim) ** 0.5
                best = max(
                    sum(w[h] * torch.relu(q[h] @ model.key_norm(model.key_proj(tokens[i, j]))) for h in range(heads))
                    for j in range(p)
                )
                per_query_token.append(best)
            scores[i] = torch.stack(per_query_token).mean()
    return scores


def test_indexer_forward_matches_its_formula_in_any_chunking(monkeypatch):
    torch.manual_seed(0)
    model = LightningIndexer(dim=D, heads=3, head_dim=5)
    query, tokens = torch.randn(4, D), torch.randn(6, 7, D)
    expected = reference_indexer_scores(model, query, tokens)
    with torch.no_grad():
        assert torch.allclose(model(query, tokens), expected, atol=1e-5)
        monkeypatch.setattr(indexer_module, "CHUNK_TOKENS", 5)  # chunks cut across frames
        assert torch.allclose(model(query, tokens), expected, atol=1e-5)


def test_indexer_with_hand_set_weights_picks_the_frame_with_the_query_direction():
    model = LightningIndexer(dim=D, heads=1, head_dim=D)
    with torch.no_grad():
        model.query_proj.weight.copy_(torch.eye(D))
        model.key_proj.weight.copy_(torch.eye(D))
        model.head_weights.weight.copy_(torch.ones(1, D))
        # LayerNorm of a one-hot e_i is (e_i - 1/D) / std: e0 . LN(e0) is the largest dot with e0
    scores = model(QUERY, DETAIL_IN_ONE_PATCH)
    assert scores.argmax().item() == 0
    assert scores[2].item() == 0.0  # e0 . LN(e5) < 0: ReLU cuts it


def save_random_indexer(path, dim=D, identity="patch_color:test"):
    torch.manual_seed(0)
    model = LightningIndexer(dim=dim, heads=2, head_dim=4)
    meta = {"encoder": {"name": "patch_color", "identity": identity}, "dataset": {}, "train": {}}
    return save_checkpoint(path, model, meta), model


def test_indexer_router_loads_a_checkpoint_and_scores_with_its_weights(tmp_path):
    path, model = save_random_indexer(tmp_path / "indexer.pt")
    built = router("indexer", checkpoint=str(path), topk=2)
    choice = built.select(QUERY, view(DETAIL_IN_ONE_PATCH), 8)
    with torch.no_grad():
        expected = model(QUERY, DETAIL_IN_ONE_PATCH)
    assert choice.scores == pytest.approx(expected.tolist())
    assert choice.chosen == tuple(expected.argsort(descending=True)[:2].tolist())
    built.check_encoder("patch_color:test")  # the identity it was trained with passes
    assert built.select(QUERY, view(None, n=3), 8).chosen == ()


def test_missing_checkpoint_names_the_key_and_the_command(tmp_path):
    with pytest.raises(ConfigError) as error:
        router("indexer", checkpoint=str(tmp_path / "none.pt"))
    assert "router.checkpoint" in str(error.value) and TRAIN_COMMAND in str(error.value)
    assert TRAIN_COMMAND == "python -m harness.train_indexer dataset=synthetic encoder=patch_color"


def test_unreadable_checkpoint_names_the_key_and_the_command(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="router.checkpoint") as error:
        router("indexer", checkpoint=str(tmp_path / "bad.pt"))
    assert TRAIN_COMMAND in str(error.value)


def test_checkpoint_for_another_encoder_is_refused(tmp_path):
    path, _ = save_random_indexer(tmp_path / "indexer.pt", dim=4)
    built = router("indexer", checkpoint=str(path))
    with pytest.raises(ConfigError, match="router.checkpoint") as error:
        built.select(QUERY, view(DETAIL_IN_ONE_PATCH), 8)  # trained on D=4, memory has D=8
    assert "D=4" in str(error.value) and "D=8" in str(error.value) and TRAIN_COMMAND in str(error.value)
    with pytest.raises(ConfigError, match="router.checkpoint") as error:
        built.check_encoder("clip:other")
    assert "patch_color:test" in str(error.value) and TRAIN_COMMAND in str(error.value)
