"""CLIP or SigLIP from a local checkpoint: patch tokens and text tokens in the model's joint image-text space.

Frames: the vision tower's last hidden state per patch (CLS dropped), through the same final layer norm and
projection that CLIP applies to its pooled CLS token, so every patch lands where whole images do. SigLIP pools
with an attention head instead of a projection; each patch goes through that head's value path and MLP (its
contribution to the pooled embedding, as MaskCLIP does for CLIP's attention pool). Text: every token of the
text tower's last hidden state (final layer norm applied) through the text projection.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness.encoders.base import ENCODERS
from harness.encoders.checkpoint import (
    Dtype,
    checkpoint_digest,
    require_model_path,
    require_model_type,
    resize_frames,
    resolve_device,
)
from harness.errors import ConfigError

SUPPORTED = ("clip", "siglip")  # config.json model_type


@dataclass(frozen=True)
class ClipConfig:
    """A local CLIP or SigLIP checkpoint; frames are resized (no crop) to its square input size."""

    name: str = "clip"
    model_path: str = ""  # folder with config.json, weights and processor files; required, nothing is downloaded
    dtype: Dtype = Dtype.float32  # weights and activations; tokens always come back as float32
    device: str = "cpu"  # cpu, cuda, cuda:N, or auto (cuda when available)
    batch_size: int = 32  # frames per forward pass


@ENCODERS.register("clip", ClipConfig)
class Clip:
    """Patch tokens [N, (S/patch)^2, D] and text tokens [S, D] of a CLIP or SigLIP model, D = its joint dim."""

    def __init__(self, cfg: ClipConfig) -> None:
        from transformers import AutoModel, AutoProcessor

        folder = require_model_path("clip", cfg.model_path)
        model_type = require_model_type(
            "clip", folder, SUPPORTED, "for a Qwen2-VL / Qwen2.5-VL checkpoint use encoder=backend_vision"
        )
        if cfg.batch_size < 1:
            raise ConfigError(f"encoder=clip: batch_size={cfg.batch_size}: must be >= 1")
        self.cfg = cfg
        self._device = resolve_device("clip", cfg.device)
        self._dtype = getattr(torch, cfg.dtype.value)
        self._processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self._model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=self._dtype)
        self._model.to(self._device).eval()
        self._is_siglip = model_type == "siglip"
        vision_config = self._model.config.vision_config
        self.image_size = int(vision_config.image_size)
        self.tokens_per_frame = (self.image_size // int(vision_config.patch_size)) ** 2
        self.identity = f"clip:{model_type}:{checkpoint_digest(folder)}:{cfg.dtype.value}:{self.image_size}px"
        # one forward at a time: streams encode from worker threads, and a fast tokenizer is not re-entrant
        self._lock = threading.Lock()

    def encode_frames(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        size = self.image_size
        chunks = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(frames), self.cfg.batch_size):
                batch = resize_frames(frames[start : start + self.cfg.batch_size], size, size)
                pixels = self._processor.image_processor(
                    images=batch, do_resize=False, do_center_crop=False, return_tensors="pt"
                )["pixel_values"]
                chunks.append(self._patch_tokens(pixels.to(self._device, self._dtype)).float().cpu())
        if not chunks:
            return torch.zeros(0, self.tokens_per_frame, self._joint_dim())
        return torch.cat(chunks)

    def encode_text(self, text: str) -> torch.Tensor:
        text_model = self._model.text_model
        limit = int(text_model.config.max_position_embeddings)
        with self._lock, torch.inference_mode():
            inputs = self._processor.tokenizer(text, truncation=True, max_length=limit, return_tensors="pt")
            inputs = {k: v.to(self._device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
            hidden = text_model(**inputs).last_hidden_state[0]  # final layer norm already applied
            hidden = hidden[inputs["attention_mask"][0].bool()]
            projection = text_model.head if self._is_siglip else self._model.text_projection
            return projection(hidden).float().cpu()

    def _patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        vision = self._model.vision_model
        hidden = vision(pixel_values=pixels).last_hidden_state
        if self._is_siglip:  # post-layernormed already, no CLS
            return _pooling_head_per_token(vision.head, hidden) if vision.config.vision_use_head else hidden
        return self._model.visual_projection(vision.post_layernorm(hidden[:, 1:]))

    def _joint_dim(self) -> int:
        config = self._model.config
        if self._is_siglip:
            return int(config.vision_config.hidden_size)
        return int(config.projection_dim)


# ---- helpers


def _pooling_head_per_token(head: Any, hidden: torch.Tensor) -> torch.Tensor:
    """SigLIP's attention-pooling head applied to each token alone: value and output projections, then the MLP.

    The head's pooled output is a softmax-weighted sum of exactly these value paths (plus the residual MLP), so a
    patch's vector is its own contribution in the space where the text embeddings live.
    """
    attention = head.attention  # torch.nn.MultiheadAttention with packed q, k, v weights
    dim = hidden.shape[-1]
    values = torch.nn.functional.linear(hidden, attention.in_proj_weight[2 * dim :], attention.in_proj_bias[2 * dim :])
    values = attention.out_proj(values)
    return values + head.mlp(head.layernorm(values))
