"""Learned router: a small "lightning indexer" (DeepSeek-V3.2 DSA, ported to video frames)
scores memory candidates for a query; trained by `python -m harness.train_indexer`.

Per query token s, head h and visual token (n, p):
    q[s, h] = W_q x_s,   k[n, p] = LayerNorm(W_k v_{n,p}) (one key shared by all heads),
    w[s, h] = (W_w x_s)_h / sqrt(H d),   I[s, n, p] = sum_h w[s, h] ReLU(q[s, h] . k[n, p]);
a candidate's score is max over its tokens p, mean over query tokens s (as cos_sim_fine).

A checkpoint holds the weights and what they were trained with (model shape, encoder identity,
dataset spec, training stats); the router refuses one that does not fit the job's encoder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.memory.base import FrameChoice, MemoryView
from harness.routers.base import ROUTERS
from harness.routers.scoring import ScoringConfig, candidate_tokens, check_options, choose

CHECKPOINT_FORMAT = "harness.indexer/1"
TRAIN_COMMAND = "python -m harness.train_indexer dataset=synthetic encoder=patch_color"
CHUNK_TOKENS = 4096  # visual tokens projected and scored at once: bounds the [S, H, tokens] intermediate


@dataclass(frozen=True)
class IndexerConfig(ScoringConfig):
    """Top-k candidates by a trained indexer's score; the checkpoint is loaded when the router is built."""

    name: str = "indexer"
    checkpoint: str = "checkpoints/indexer-patch_color.pt"  # written by python -m harness.train_indexer


class LightningIndexer(nn.Module):
    """W_q (D -> H x d), W_k (D -> d, LayerNorm after), per-head weights W_w (D -> H); ReLU of the dot products."""

    def __init__(self, dim: int, heads: int = 4, head_dim: int = 64) -> None:
        super().__init__()
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.query_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.key_proj = nn.Linear(dim, head_dim, bias=False)
        self.key_norm = nn.LayerNorm(head_dim)
        self.head_weights = nn.Linear(dim, heads, bias=False)

    def shape(self) -> dict[str, int]:
        return {"dim": self.dim, "heads": self.heads, "head_dim": self.head_dim}

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Candidate scores: query [S, D], candidate tokens [N, P, D] -> [N] (max over p, mean over s)."""
        n, p, d = tokens.shape
        queries = self.query_proj(query).view(-1, self.heads, self.head_dim)  # [S, H, d]
        weights = self.head_weights(query) * (self.heads * self.head_dim) ** -0.5  # [S, H]
        flat = tokens.reshape(n * p, d)
        token_scores = [
            self._token_scores(queries, weights, flat[start : start + CHUNK_TOKENS])
            for start in range(0, n * p, CHUNK_TOKENS)
        ]
        return torch.cat(token_scores, dim=1).view(-1, n, p).amax(dim=2).mean(dim=0)

    def _token_scores(self, queries: torch.Tensor, weights: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """I[s, t] for visual tokens t: [S, H, d], [S, H], [T, D] -> [S, T]."""
        keys = self.key_norm(self.key_proj(tokens))  # [T, d]
        dots = torch.relu(torch.matmul(queries, keys.T))  # [S, H, T]
        return torch.bmm(weights.unsqueeze(1), dots).squeeze(1)


@ROUTERS.register("indexer", IndexerConfig)
class Indexer:
    needs_tokens = True

    def __init__(self, cfg: IndexerConfig) -> None:
        check_options(cfg)
        self.cfg = cfg
        self.checkpoint = load_checkpoint(cfg.checkpoint)
        # the config hash covers the path, not the weights: record this with a job's results
        self.checkpoint_sha256 = hashlib.sha256(Path(cfg.checkpoint).read_bytes()).hexdigest()
        self.model = LightningIndexer(**self.checkpoint["model"])
        self.model.load_state_dict(self.checkpoint["weights"])
        self.model.eval()

    def check_encoder(self, identity: str) -> None:
        """Raise ConfigError unless the checkpoint was trained on tokens of this encoder (its `identity`)."""
        trained = self.checkpoint["encoder"]["identity"]
        if identity != trained:
            raise ConfigError(
                f"router.checkpoint={self.cfg.checkpoint}: trained with encoder {trained!r}, but this job's "
                f"encoder is {identity!r}. Train one for it, e.g. {TRAIN_COMMAND} (with the job's encoder "
                "and --out PATH), and point router.checkpoint at it"
            )

    def select(self, query_tokens: torch.Tensor | None, memory: MemoryView, max_frames: int) -> FrameChoice:
        inputs = candidate_tokens(query_tokens, memory)
        if inputs is None:
            return FrameChoice(())
        query, keys = inputs
        if query.shape[-1] != self.model.dim:
            raise ConfigError(
                f"router.checkpoint={self.cfg.checkpoint}: trained on D={self.model.dim} tokens, but this job's "
                f"encoder gives D={query.shape[-1]}. Train one for this encoder: {TRAIN_COMMAND} (with the "
                "job's encoder and --out PATH)"
            )
        with torch.inference_mode():
            scores = self.model(query, keys)
        return choose(scores, max_frames, self.cfg)


def save_checkpoint(path: str | Path, model: LightningIndexer, meta: dict[str, Any]) -> Path:
    """Write weights + `meta` (encoder, dataset, train: plain data) atomically: a temp file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    entry = {"format": CHECKPOINT_FORMAT, "model": model.shape(), "weights": weights, **meta}
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(entry, out)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint as saved; ConfigError naming router.checkpoint and the training command otherwise."""
    where = f"router.checkpoint={path}"
    if not Path(path).is_file():
        raise ConfigError(f"{where}: no such file. Train an indexer first: {TRAIN_COMMAND} --out {path}")
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file: the user's fix is the same
        raise ConfigError(f"{where}: cannot read it ({e}). Train it again: {TRAIN_COMMAND} --out {path}") from None
    if not isinstance(entry, dict) or entry.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"{where}: not an indexer checkpoint (format {CHECKPOINT_FORMAT}). Train one: {TRAIN_COMMAND} --out {path}"
        )
    missing = [key for key in ("model", "weights", "encoder") if key not in entry]
    if missing:
        raise ConfigError(f"{where}: checkpoint lacks {', '.join(missing)}. Train it again: {TRAIN_COMMAND}")
    return entry
