"""The answering VLM's own vision tower and input embeddings (Qwen2-VL, Qwen2.5-VL) as the encoder.

Frames: each frame is one image, resized to a fixed height x width (multiples of patch x merge = 28), through
the image processor and `visual(pixel_values, grid_thw)`; the merger's tokens are the ones the language model
would read, [N, (height/28) * (width/28), D] with D the LLM hidden size. Text: the input-embedding rows of the
raw prompt's tokens (no chat template, not contextualised), as the key-frame router design compares them.
Only the vision tower and the embedding table are kept after loading: the language model's layers are not
needed to encode, and on a 7B model they are most of the memory.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

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

SUPPORTED = ("qwen2_vl", "qwen2_5_vl")  # config.json model_type


@dataclass(frozen=True)
class BackendVisionConfig:
    """A local Qwen2-VL / Qwen2.5-VL checkpoint; every frame is resized to height x width (no crop)."""

    name: str = "backend_vision"
    model_path: str = ""  # folder with config.json, weights and processor files; required, nothing is downloaded
    dtype: Dtype = Dtype.float32  # weights and activations; tokens always come back as float32
    device: str = "cpu"  # cpu, cuda, cuda:N, or auto (cuda when available)
    height: int = 252  # multiple of 28; 252 x 336 is what Qwen's own resize makes of a 320 x 240 frame: 108 tokens
    width: int = 336
    batch_size: int = 8  # frames per forward pass


@ENCODERS.register("backend_vision", BackendVisionConfig)
class BackendVision:
    """Merged vision tokens [N, P, D] and prompt input embeddings [S, D] of a Qwen2(.5)-VL model."""

    def __init__(self, cfg: BackendVisionConfig) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = require_model_path("backend_vision", cfg.model_path)
        model_type = require_model_type("backend_vision", folder, SUPPORTED, "for CLIP or SigLIP use encoder=clip")
        if cfg.batch_size < 1:
            raise ConfigError(f"encoder=backend_vision: batch_size={cfg.batch_size}: must be >= 1")
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        image_processor = processor.image_processor
        factor = int(image_processor.patch_size) * int(image_processor.merge_size)
        if cfg.height < factor or cfg.width < factor or cfg.height % factor or cfg.width % factor:
            raise ConfigError(
                f"encoder=backend_vision: height={cfg.height}, width={cfg.width}: both must be positive multiples "
                f"of {factor} (patch {image_processor.patch_size} x merge {image_processor.merge_size})"
            )
        self.cfg = cfg
        self.tokens_per_frame = (cfg.height // factor) * (cfg.width // factor)
        self._device = resolve_device("backend_vision", cfg.device)
        dtype = getattr(torch, cfg.dtype.value)
        model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, dtype=dtype)
        self._visual = model.model.visual.to(self._device).eval()
        self._embeddings = model.get_input_embeddings().to(self._device).eval()
        del model  # the language model's layers and head go with it
        self._image_processor = image_processor
        self._tokenizer = processor.tokenizer
        self._dtype = dtype
        self.identity = (
            f"backend_vision:{model_type}:{checkpoint_digest(folder)}:{cfg.dtype.value}:{cfg.height}x{cfg.width}"
        )
        # one forward at a time: streams encode from worker threads, and a fast tokenizer is not re-entrant
        self._lock = threading.Lock()

    def encode_frames(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        chunks = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(frames), self.cfg.batch_size):
                batch = resize_frames(frames[start : start + self.cfg.batch_size], self.cfg.height, self.cfg.width)
                inputs = self._image_processor(images=batch, do_resize=False, return_tensors="pt")
                pixels = inputs["pixel_values"].to(self._device, self._dtype)
                merged = self._visual(pixels, grid_thw=inputs["image_grid_thw"].to(self._device)).pooler_output
                chunks.append(merged.reshape(len(batch), self.tokens_per_frame, -1).float().cpu())
        if not chunks:
            return torch.zeros(0, self.tokens_per_frame, self._embeddings.embedding_dim)
        return torch.cat(chunks)

    def encode_text(self, text: str) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError("encoder=backend_vision: the text has no tokens; a query must not be empty")
            return self._embeddings(torch.tensor(ids, device=self._device)).float().cpu()
