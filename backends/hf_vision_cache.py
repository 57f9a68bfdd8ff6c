"""Vision-tower outputs of Qwen2-VL / Qwen2.5-VL frames, kept across the queries of a stream.

A query at t sees mostly the frames the query before it saw. With frames given as images, a frame's merged vision
tokens depend on its pixels and the resize only, so they are kept in an LRU keyed by a digest of the pixels. A
request runs the image processor and the vision tower on the frames not kept only, expands the prompt's image
placeholders from every frame's grid, and hands the features to generate() as `mm_encoder_outputs`: the hook
transformers itself uses between the vision tower and the prefill, so the prefill sees the same embeddings and
3D rope positions as on the plain path. Greedy outputs are the plain path's (tested on the CPU in float32; on a
GPU, kernels picked for another batch of frames may round differently: bench/gpu_local.py counts the answers that
agree). Video input pairs frames in temporal patches whose pairing shifts as the window slides, so there is no
per-frame output to keep.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

REUSABLE = ("qwen2_vl", "qwen2_5_vl")  # model types whose image features split per image by image_grid_thw


@dataclass(frozen=True)
class Prepared:
    """One request's tokenized prompt, and the frames the vision tower still has to encode."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, mm_token_type_ids, image_grid_thw
    keys: tuple[bytes, ...]  # per frame, in prompt order
    new_keys: tuple[bytes, ...]  # distinct frames not kept yet, in the order of `pixel_values`
    pixel_values: torch.Tensor | None  # the image processor's patches of the new frames only
    new_grids: torch.Tensor | None


@dataclass(frozen=True)
class _Kept:
    features: torch.Tensor  # [tokens of the frame, text hidden size], on the model's device
    grid: torch.Tensor  # (t, h, w) patches, as the image processor returned it


class VisionCache:
    """Per-frame vision outputs of one model at one resize spec (one backend config), bounded in frames."""

    def __init__(self, model: Any, processor: Any, image_kwargs: dict[str, Any], capacity: int) -> None:
        self._model = model
        self._processor = processor
        self._image_kwargs = image_kwargs  # the resize spec: fixed for the cache's life, so not in the key
        self.capacity = capacity
        self._kept: OrderedDict[bytes, _Kept] = OrderedDict()
        self.encoded = 0  # frames that went through the vision tower
        self.reused = 0  # frames whose outputs came from the cache
        self.calls = 0  # vision tower forwards

    def prepare(self, text: str, frames: Sequence[np.ndarray]) -> Prepared:
        """Tokenize `text` (one image placeholder per frame) and preprocess the frames not kept; no model call."""
        keys = tuple(frame_key(pixels) for pixels in frames)
        new_keys = tuple(dict.fromkeys(k for k in keys if k not in self._kept))  # distinct, in order
        grid_of = {k: self._kept[k].grid for k in keys if k in self._kept}
        pixel_values = new_grids = None
        if new_keys:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            processed = self._processor.image_processor(
                images=[frames[first[k]] for k in new_keys], return_tensors="pt", **self._image_kwargs
            )
            pixel_values, new_grids = processed["pixel_values"], processed["image_grid_thw"]
            grid_of.update(zip(new_keys, new_grids, strict=True))
        grids = torch.stack([grid_of[k] for k in keys]) if keys else None
        processor = self._processor
        replacements = [processor.replace_image_token({"image_grid_thw": grids}, i) for i in range(len(keys))]
        texts, _ = processor.get_text_with_replacements([text], replacements)
        tokens = processor.tokenizer(texts, return_tensors="pt")
        inputs = {
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "mm_token_type_ids": torch.tensor(processor.create_mm_token_type_ids(tokens["input_ids"])),
        }
        if grids is not None:
            inputs["image_grid_thw"] = grids
        return Prepared(inputs, keys, new_keys, pixel_values, new_grids)

    def features(self, prepared: Prepared) -> tuple[torch.Tensor, ...]:
        """Every frame's merged vision tokens in prompt order: the new ones encoded in one forward, then kept."""
        fresh: dict[bytes, _Kept] = {}
        if prepared.new_keys:
            device = self._model.device
            out = self._model.get_image_features(
                pixel_values=prepared.pixel_values.to(device), image_grid_thw=prepared.new_grids.to(device)
            ).pooler_output
            self.calls += 1
            self.encoded += len(prepared.new_keys)
            fresh = {k: _Kept(f.clone(), g) for k, f, g in zip(prepared.new_keys, out, prepared.new_grids, strict=True)}
        self.reused += sum(k not in fresh for k in prepared.keys)
        features = tuple((fresh[k] if k in fresh else self._kept[k]).features for k in prepared.keys)
        for k in prepared.keys:  # most recently used last; evicted from the front
            if k in self._kept:
                self._kept.move_to_end(k)
        self._kept.update(fresh)
        while len(self._kept) > self.capacity:
            self._kept.popitem(last=False)
        return features

    def clear(self) -> None:
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)


def frame_key(pixels: np.ndarray) -> bytes:
    """blake2b of the frame's shape and pixel bytes (about 0.3 ms for 320 x 240)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.digest()
