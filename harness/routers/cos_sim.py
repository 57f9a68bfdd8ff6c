"""Similarity routers of the published key-frame router (Wencong50714/streaming, src/router.py): choose S2's memory
candidates by cosine similarity between the query's tokens and each candidate's visual tokens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.memory.base import FrameChoice, MemoryView
from harness.routers.base import ROUTERS
from harness.routers.scoring import ScoringConfig, candidate_tokens, check_options, choose, cosine_tokens


@dataclass(frozen=True)
class CosSimCoarseConfig(ScoringConfig):
    """Top-k candidates by cosine of the mean-pooled query and the mean-pooled frame."""

    name: str = "cos_sim_coarse"


@dataclass(frozen=True)
class CosSimFineConfig(ScoringConfig):
    """Top-k candidates by token-wise max-mean cosine (ColBERT MaxSim, averaged over query tokens)."""

    name: str = "cos_sim_fine"


def coarse_scores(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """cos(mean_s q_s, mean_p k_{n,p}) for each candidate: [S, D] x [N, P, D] -> [N]."""
    return F.cosine_similarity(keys.mean(dim=1), query.mean(dim=0, keepdim=True), dim=-1)


def fine_scores(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """mean_s max_p cos(q_s, k_{n,p}) for each candidate: [S, D] x [N, P, D] -> [N]."""
    return cosine_tokens(query, keys).amax(dim=1).mean(dim=-1)


class _CosSim:
    """The two similarity routers differ only in their score function."""

    needs_tokens = True
    _scores: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __init__(self, cfg: CosSimCoarseConfig | CosSimFineConfig) -> None:
        check_options(cfg)
        self.cfg = cfg

    def select(self, query_tokens: torch.Tensor | None, memory: MemoryView, max_frames: int) -> FrameChoice:
        inputs = candidate_tokens(query_tokens, memory)
        if inputs is None:
            return FrameChoice(())
        return choose(type(self)._scores(*inputs), max_frames, self.cfg)


@ROUTERS.register("cos_sim_coarse", CosSimCoarseConfig)
class CosSimCoarse(_CosSim):
    """One vector per side: cheap, but a detail in one patch is averaged away."""

    _scores = staticmethod(coarse_scores)


@ROUTERS.register("cos_sim_fine", CosSimFineConfig)
class CosSimFine(_CosSim):
    """Each query token finds its best-matching patch of a frame; a frame's score is the mean over query tokens."""

    _scores = staticmethod(fine_scores)
