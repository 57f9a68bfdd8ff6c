"""Paired comparisons of two configurations over the same videos, with videos as the unit of resampling.

Queries of one video share its content, so they are not independent: both procedures below move whole
videos. Each configuration is summarised per video by per-key sums (values and counts); any statistic that is
a function of summed values and counts (every official aggregation is) is recomputed exactly on each draw.

* Confidence interval: percentile bootstrap clustered by video. Draw V videos with replacement (the same draw
  for both configurations, which keeps the pairing), recompute the difference; the 95% interval is the
  2.5th and 97.5th percentiles (inverted CDF: the smallest draw value whose cumulative share reaches the level).
  When V**V ordered draws number no more than the resamples asked for, all of them are enumerated: the
  bootstrap distribution is then exact, which is how a small case can be checked by hand.
* Test: paired permutation (randomisation) test over videos. Under the null hypothesis the two configurations
  are exchangeable within each video, so each video's pair of results is swapped with probability 1/2 and the
  difference recomputed. Two-sided p = share of draws whose |difference| reaches the observed one; all 2**V swap
  patterns when that is no more than the permutations asked for (exact), else random ones with p = (1 + hits) /
  (1 + draws), so that p is never 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]  # (value[R, K], count[R, K]) -> name -> [R]
BLOCK = 2_000_000  # draws x videos per matrix product: bounds memory on runs with many videos


@dataclass(frozen=True)
class Comparison:
    """Per statistic name: the variant minus the baseline, its 95% interval and the paired test's p."""

    delta: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    p: dict[str, float]
    videos: int
    exact_ci: bool
    exact_p: bool


def compare(
    base: tuple[np.ndarray, np.ndarray],
    variant: tuple[np.ndarray, np.ndarray],
    statistic: Statistic,
    resamples: int = 2000,
    permutations: int = 5000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """base and variant: (value[V, K], count[V, K]) per video (rows aligned: the same videos, the same keys)."""
    bv, bc = (np.asarray(a, float) for a in base)
    vv, vc = (np.asarray(a, float) for a in variant)
    videos = bv.shape[0]
    if videos == 0:
        raise ValueError("no video has records in both configurations: nothing to compare")
    rng = np.random.default_rng(seed)
    observed = _difference(statistic, vv.sum(0)[None], vc.sum(0)[None], bv.sum(0)[None], bc.sum(0)[None])

    keys = bv.shape[1]
    both = np.hstack([vv, vc, bv, bc])  # one product per block of draws instead of four
    exact_ci = videos <= 8 and videos**videos <= resamples
    draws: dict[str, list[np.ndarray]] = {name: [] for name in observed}
    for weights in _bootstrap_weights(videos, resamples, rng, exact_ci):
        drawn = weights @ both
        diff = _difference(statistic, *(drawn[:, i * keys : (i + 1) * keys] for i in range(4)))
        for name, values in diff.items():
            draws[name].append(values)
    tail = (1 - level) / 2
    low, high = {}, {}
    for name, chunks in draws.items():
        values = np.concatenate(chunks)
        values = values[~np.isnan(values)]
        low[name] = float(np.quantile(values, tail, method="inverted_cdf")) if values.size else np.nan
        high[name] = float(np.quantile(values, 1 - tail, method="inverted_cdf")) if values.size else np.nan

    exact_p = videos <= 30 and 2**videos <= permutations
    hits = {name: 0 for name in observed}
    total = 0
    moved = np.hstack([bv - vv, bc - vc])  # what swapping one video moves from the variant to the baseline
    totals = both.sum(0)
    for swaps in _swap_masks(videos, permutations, rng, exact_p):
        shift = swaps @ moved
        value_shift, count_shift = shift[:, :keys], shift[:, keys:]
        diff = _difference(
            statistic,
            totals[:keys] + value_shift,
            totals[keys : 2 * keys] + count_shift,
            totals[2 * keys : 3 * keys] - value_shift,
            totals[3 * keys :] - count_shift,
        )
        for name, values in diff.items():
            reference = abs(observed[name][0])
            hits[name] += int(np.sum(np.abs(values) >= reference - 1e-12 * max(1.0, reference)))
        total += swaps.shape[0]
    p = {}
    for name in observed:
        if np.isnan(observed[name][0]):
            p[name] = np.nan
        else:
            p[name] = hits[name] / total if exact_p else (1 + hits[name]) / (1 + total)
    delta = {name: float(v[0]) for name, v in observed.items()}
    return Comparison(delta, low, high, p, videos, exact_ci, exact_p)


def _difference(
    statistic: Statistic, vv: np.ndarray, vc: np.ndarray, bv: np.ndarray, bc: np.ndarray
) -> dict[str, np.ndarray]:
    variant, base = statistic(vv, vc), statistic(bv, bc)
    return {name: variant[name] - base[name] for name in variant}


def _bootstrap_weights(videos: int, resamples: int, rng: np.random.Generator, exact: bool):
    """Blocks of draw weights [draws, V]: how often each video is drawn (all V**V ordered draws when exact)."""
    if exact:
        draws = np.array(list(itertools.product(range(videos), repeat=videos)))
        yield np.stack([np.bincount(d, minlength=videos) for d in draws]).astype(float)
        return
    block = max(1, BLOCK // videos)
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        yield rng.multinomial(videos, np.full(videos, 1 / videos), size=size).astype(float)


def _swap_masks(videos: int, permutations: int, rng: np.random.Generator, exact: bool):
    """Blocks of 0/1 masks [draws, V]: which videos swap their two results (all 2**V patterns when exact)."""
    if exact:
        yield np.array(list(itertools.product((0.0, 1.0), repeat=videos)))
        return
    block = max(1, BLOCK // videos)
    for start in range(0, permutations, block):
        size = min(block, permutations - start)
        yield rng.integers(0, 2, size=(size, videos)).astype(float)
