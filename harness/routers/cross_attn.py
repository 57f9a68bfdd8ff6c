"""Cross-attention router: the query's tokens attend over every visual token of memory at once, and a
candidate is scored by the attention mass it receives.

The published `cross-attn` router (Wencong50714/streaming, src/router.py) takes the softmax per frame, over
that frame's own P tokens, and sums it over P: every frame then scores exactly 1 and top-k picks
among ties arbitrarily (its logits, unit vectors over sqrt(3584), were also nearly flat). This port
fixes both, as the method intends: for each query token the softmax runs jointly over all (n, p)
of all candidates, with a temperature on cosine logits, so the scores differ between frames and
sum to 1 over the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.errors import ConfigError
from harness.memory.base import FrameChoice, MemoryView
from harness.routers.base import ROUTERS
from harness.routers.scoring import ScoringConfig, candidate_tokens, check_options, choose, cosine_tokens


@dataclass(frozen=True)
class CrossAttnConfig(ScoringConfig):
    """Top-k candidates by the attention mass the query's tokens put on them (softmax over all candidates)."""

    name: str = "cross_attn"
    attn_temperature: float = 0.05  # softmax temperature on cosine logits (cosines lie in [-1, 1])


@ROUTERS.register("cross_attn", CrossAttnConfig)
class CrossAttn:
    needs_tokens = True

    def __init__(self, cfg: CrossAttnConfig) -> None:
        check_options(cfg)
        if cfg.attn_temperature <= 0:
            raise ConfigError(f"router=cross_attn: router.attn_temperature must be > 0, got {cfg.attn_temperature}")
        self.cfg = cfg

    def select(self, query_tokens: torch.Tensor | None, memory: MemoryView, max_frames: int) -> FrameChoice:
        inputs = candidate_tokens(query_tokens, memory)
        if inputs is None:
            return FrameChoice(())
        return choose(attention_mass(*inputs, self.cfg.attn_temperature), max_frames, self.cfg)


def attention_mass(query: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Attention each candidate receives, averaged over query tokens: [S, D] x [N, P, D] -> [N], sums to 1.

    A[s, n, p] = softmax over all (n, p) of cos(q_s, k_{n,p}) / temperature; score_n = mean_s sum_p A[s, n, p].
    """
    logits = cosine_tokens(query, keys).div_(temperature)  # [N, P, S]
    n, p, s = logits.shape
    attention = torch.softmax(logits.view(n * p, s), dim=0).view(n, p, s)
    return attention.sum(dim=1).mean(dim=-1)
