"""The clustered bootstrap and the paired permutation test against cases worked out by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from analysis.resample import compare


def _mean(value: np.ndarray, count: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy over one key: summed values over summed counts."""
    return {"acc": value[:, 0] / count[:, 0]}


def _videos(correct: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """One query per video: value[V, 1] and count[V, 1]."""
    return np.array(correct, float)[:, None], np.ones((len(correct), 1))


def test_four_videos_by_hand():
    # per-video differences (variant - baseline) are 1, 1, 1, 0: the observed difference is 3/4.
    # Bootstrap, all 4**4 = 256 ordered draws: S = number of "1" draws ~ Binomial(4, 3/4).
    #   P(S=0) = 1/256 = 0.0039 < 0.025 <= P(S<=1) = 13/256 = 0.0508, so the 2.5% point is S=1: 1/4.
    #   P(S<=3) = 1 - 81/256 = 0.684 < 0.975, so the 97.5% point is S=4: 4/4.
    # Permutation, all 2**4 = 16 swap patterns: the mean is +-1 +-1 +-1 +-0 over 4; |mean| >= 3/4 only when the
    #   three non-zero videos keep one sign: 2 patterns x 2 (the zero video either way) = 4 of 16, p = 0.25.
    base, variant = _videos([0, 0, 0, 1]), _videos([1, 1, 1, 1])
    result = compare(base, variant, _mean, resamples=2000, permutations=5000)
    assert result.exact_ci and result.exact_p
    assert result.delta["acc"] == pytest.approx(0.75)
    assert (result.low["acc"], result.high["acc"]) == pytest.approx((0.25, 1.0))
    assert result.p["acc"] == pytest.approx(0.25)


def test_exact_enumeration_agrees_with_a_direct_count():
    """Three videos with unequal query counts: the ratio-of-sums statistic over every ordered draw."""
    base = (np.array([[1.0], [2.0], [0.0]]), np.array([[2.0], [3.0], [1.0]]))
    variant = (np.array([[2.0], [2.0], [1.0]]), np.array([[2.0], [3.0], [1.0]]))
    result = compare(base, variant, _mean, resamples=100, permutations=100)
    diffs = []
    for draw in itertools.product(range(3), repeat=3):
        picked = list(draw)
        n = base[1][picked].sum()
        diffs.append(variant[0][picked].sum() / n - base[0][picked].sum() / n)
    diffs = np.sort(diffs)
    assert result.low["acc"] == pytest.approx(diffs[int(np.ceil(0.025 * 27)) - 1])
    assert result.high["acc"] == pytest.approx(diffs[int(np.ceil(0.975 * 27)) - 1])


def test_random_draws_approach_the_exact_distribution():
    rng = np.random.default_rng(3)
    correct_base = (rng.random(40) < 0.5).astype(float)
    correct_variant = np.clip(correct_base + (rng.random(40) < 0.3), 0, 1)
    base, variant = _videos(list(correct_base)), _videos(list(correct_variant))
    result = compare(base, variant, _mean, resamples=4000, permutations=4000, seed=1)
    assert not result.exact_ci and not result.exact_p
    d = correct_variant - correct_base
    se = d.std() / np.sqrt(len(d))  # normal approximation of the same interval
    assert result.low["acc"] == pytest.approx(d.mean() - 1.96 * se, abs=0.04)
    assert result.high["acc"] == pytest.approx(d.mean() + 1.96 * se, abs=0.04)
    nonzero = d[d != 0]  # a video with equal results is the same whichever way it is swapped
    flips = [np.abs((nonzero * np.array(signs)).mean()) for signs in itertools.product((1, -1), repeat=len(nonzero))]
    exact_p = np.mean(np.array(flips) >= abs(nonzero.mean()) - 1e-12)
    assert result.p["acc"] == pytest.approx(exact_p, abs=0.01)
    again = compare(base, variant, _mean, resamples=4000, permutations=4000, seed=1)
    assert again == result  # a fixed seed gives the same numbers


def test_no_shared_video_is_an_error():
    empty = (np.zeros((0, 1)), np.zeros((0, 1)))
    with pytest.raises(ValueError, match="no video has records in both"):
        compare(empty, empty, _mean)
