"""What every scoring router shares: its common options, and how candidate scores become a FrameChoice.

A scoring router computes one score per memory candidate; `choose` then applies the common
options (top-k or sampled mask, the frame budget, the ±1 neighbours of the published key-frame
router, Wencong50714/streaming src/router.py). `cosine_tokens` is the batched token-to-token cosine that the
similarity routers build on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from harness.memory.base import FrameChoice, MemoryView

# Candidates per chunk of the token cosine: 16 frames x 64 tokens x 512 dims (2 MiB) stay in
# cache between the norm and the matmul; measured fastest of 8..128 at 3,600 x 64 x 512.
CHUNK_TOKENS = 1024


class Mask(str, Enum):
    topk = "topk"  # the k best scores
    sample = "sample"  # k drawn without replacement from softmax(score / temperature) (published v0.4)


@dataclass(frozen=True)
class ScoringConfig:
    """Options every scoring router has (each router's config adds its own and its name)."""

    name: str = ""  # set by each router's config
    topk: int = 8  # candidates chosen: k = min(topk, max_frames, N)
    neighbours: bool = False  # also offer the ±1 neighbours of chosen candidates, at lower priority
    mask: Mask = Mask.topk
    temperature: float = 0.1  # mask=sample: softmax temperature over the scores
    seed: int = 0  # mask=sample: draws are seeded from (seed, N), so a rerun picks the same frames


def check_options(cfg: ScoringConfig) -> None:
    """Raise ConfigError for option values no router can use (called by each router's constructor)."""
    if cfg.topk < 1:
        raise ConfigError(f"router={cfg.name}: router.topk must be >= 1, got {cfg.topk}")
    if cfg.temperature <= 0:
        raise ConfigError(f"router={cfg.name}: router.temperature must be > 0, got {cfg.temperature}")


def choose(scores: torch.Tensor, max_frames: int, cfg: ScoringConfig) -> FrameChoice:
    """Turn one score per candidate into the router's choice, best first."""
    n = int(scores.shape[0])
    k = max(0, min(cfg.topk, max_frames, n))
    if cfg.mask is Mask.sample and 0 < k < n:
        drawn = _sample_without_replacement(scores, k, cfg.temperature, _generator(cfg.seed, n))
        drawn = torch.sort(drawn).values
        chosen = drawn[_best_first(scores[drawn])]
    else:
        chosen = _best_first(scores)[:k]
    picked = [int(i) for i in chosen]
    return FrameChoice(
        chosen=tuple(picked),
        neighbours=_neighbours(picked, n) if cfg.neighbours else (),
        scores=tuple(float(s) for s in scores.tolist()),
    )


def candidate_tokens(query_tokens: torch.Tensor | None, memory: MemoryView) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The query [S, D] and candidate tokens [N, P, D] as float32, or None when there is nothing to score."""
    keys = memory.tokens
    if keys is None or len(memory.frames) == 0 or keys.shape[0] == 0:
        return None
    if query_tokens is None:
        raise ValueError("a scoring router needs the query's tokens [S, D]; the job passed None")
    if query_tokens.dim() != 2 or query_tokens.shape[0] == 0:
        raise ValueError(f"query tokens must be [S, D] with S >= 1, got shape {tuple(query_tokens.shape)}")
    if keys.dim() != 3 or keys.shape[0] != len(memory.frames):
        raise ValueError(f"memory tokens must be [N={len(memory.frames)}, P, D], got shape {tuple(keys.shape)}")
    if keys.shape[-1] != query_tokens.shape[-1]:
        raise ValueError(f"query tokens have D={query_tokens.shape[-1]} but memory tokens D={keys.shape[-1]}")
    return query_tokens.float(), keys.float()


def cosine_tokens(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """cos(q_s, k_{n,p}) for every query token and candidate token: [S, D] x [N, P, D] -> [N, P, S]."""
    n, p, d = keys.shape
    unit_query_t = F.normalize(query, dim=-1).T.contiguous()  # [D, S]
    flat = keys.reshape(n * p, d)
    out = torch.empty(n * p, query.shape[0], dtype=torch.float32)
    for start in range(0, n * p, CHUNK_TOKENS):
        chunk = flat[start : start + CHUNK_TOKENS]
        inverse_norm = torch.linalg.vector_norm(chunk, dim=-1).clamp_min(1e-12).reciprocal()
        torch.mm(chunk, unit_query_t, out=out[start : start + CHUNK_TOKENS])
        out[start : start + CHUNK_TOKENS] *= inverse_norm[:, None]
    return out.view(n, p, -1)


def _best_first(scores: torch.Tensor) -> torch.Tensor:
    """Indices by descending score; ties go to the later index (in a stream, the more recent candidate)."""
    n = scores.shape[0]
    return (n - 1) - torch.sort(scores.flip(0), descending=True, stable=True).indices


def _neighbours(chosen: list[int], n: int) -> tuple[int, ...]:
    """The ±1 neighbours of chosen candidates that are not chosen, in the chosen candidates' order."""
    taken = set(chosen)
    out: list[int] = []
    for index in chosen:
        for near in (index - 1, index + 1):
            if 0 <= near < n and near not in taken:
                taken.add(near)
                out.append(near)
    return tuple(out)


def _generator(seed: int, n: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, n]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def _sample_without_replacement(
    scores: torch.Tensor, k: int, temperature: float, generator: torch.Generator
) -> torch.Tensor:
    """k distinct indices drawn from softmax(scores / temperature), one after another (Gumbel top-k).

    Adding Gumbel noise to the logits and keeping the k largest is the same distribution as k
    sequential draws without replacement, and it cannot fail when some probabilities underflow to 0.
    """
    uniform = torch.rand(scores.shape, generator=generator, dtype=torch.float64).clamp_min_(1e-300)  # [0, 1)
    logits = scores.double() / temperature - torch.log(-torch.log(uniform))
    return torch.topk(logits, k).indices
