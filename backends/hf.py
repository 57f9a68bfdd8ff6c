"""Local vision-language models through transformers: a checkpoint folder, greedy decoding, measured tokens.

`Request -> chat template -> processor -> generate -> Response`. Frames go in as decoded arrays (never paths),
as one video or as one image per frame with its stream time, in the openai backend's order and labels. A loaded
model is shared by every backend config naming the same (folder, dtype, device_map, attn_implementation), so S1
and S2 on one model load it once; calls run in a worker thread, one generate at a time per loaded model.
Qwen2-VL and Qwen2.5-VL given frames as images keep their frames' vision outputs across a stream's queries
(backends/hf_vision_cache.py). Asked for a confidence (`want_confidence`), generate also returns the raw logits,
and the reply's confidence is exp(mean log-probability) of its tokens.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backends.base import BACKENDS
from backends.hf_vision_cache import REUSABLE, VisionCache
from harness.encoders.checkpoint import Dtype, require_model_path
from harness.errors import BackendError, ConfigError
from harness.records import Frame, Request, Response

log = logging.getLogger(__name__)


class FramesAs(str, Enum):
    auto = "auto"  # the model type's own way (NATIVE below)
    video = "video"  # one video: the model's temporal encoding, fewer tokens per frame (Qwen: 2 frames per patch)
    images = "images"  # one image per frame, each after its stream time; Qwen2(.5)-VL keeps vision outputs


class Attention(str, Enum):
    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"  # needs the flash-attn package and a CUDA GPU


# model types this backend runs (config.json model_type), and how frames go in with frames_as=auto
NATIVE = {
    "qwen2_vl": FramesAs.video,
    "qwen2_5_vl": FramesAs.video,
    "llava_onevision": FramesAs.video,
    "llava_next_video": FramesAs.video,
    "internvl": FramesAs.video,  # the transformers-native checkpoints (e.g. OpenGVLab/InternVL3-8B-hf)
}
PIXEL_BUDGET = ("qwen2_vl", "qwen2_5_vl")  # processors that resize to a pixel range (min_pixels .. max_pixels)


@dataclass(frozen=True)
class HFConfig:
    name: str = "hf"
    model_path: str = ""  # local checkpoint folder (config.json, weights, processor); nothing is downloaded
    dtype: Dtype = Dtype.bfloat16
    device_map: str = "auto"  # auto: every visible GPU (else the CPU); cuda, cuda:N or cpu
    attn_implementation: Attention = Attention.sdpa
    frames_as: FramesAs = FramesAs.auto
    # per-frame pixel range of Qwen2-VL-family processors (images and videos); null: the processor's own
    min_pixels: int | None = None
    max_pixels: int | None = None
    # frames whose vision outputs are kept per backend (images mode, Qwen2-VL family); 0: off
    vision_cache_frames: int = 256


@BACKENDS.register("hf", HFConfig)
class HF:
    """One greedy generate() per request on a local checkpoint."""

    takes_audio = False
    gives_confidence = True

    def __init__(self, cfg: HFConfig) -> None:
        folder, model_type = _checkpoint(cfg)
        frames_as = NATIVE[model_type] if cfg.frames_as == FramesAs.auto else cfg.frames_as
        self.cfg = cfg
        self.model_type = model_type
        self.frames_as = frames_as
        self._loaded = MODELS.acquire(_model_key(folder, cfg), lambda: _load(folder, cfg))
        self._closed = False
        processor = self._loaded.processor
        if frames_as == FramesAs.video and getattr(processor, "video_processor", None) is None:
            MODELS.release(self._loaded)
            raise ConfigError(
                f"backend=hf: {folder} has no video processor; set backend.frames_as=images for this model"
            )
        self._image_kwargs, self._video_kwargs = _processor_kwargs(cfg, model_type, processor)
        config = self._loaded.model.config
        self.context_tokens = int(config.get_text_config().max_position_embeddings)
        self._visual_ids = [
            i
            for i in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None))
            if i is not None
        ]
        self.vision_cache: VisionCache | None = None
        if frames_as == FramesAs.images and model_type in REUSABLE and cfg.vision_cache_frames > 0:
            self.vision_cache = VisionCache(
                self._loaded.model, processor, self._image_kwargs, capacity=cfg.vision_cache_frames
            )
        elif cfg.vision_cache_frames > 0:
            log.info("backend=hf: no vision-output reuse for %s with frames as %s", model_type, frames_as.value)

    @property
    def model(self) -> Any:
        """The loaded transformers model (shared with every backend on the same checkpoint and settings)."""
        return self._loaded.model

    @property
    def processor(self) -> Any:
        return self._loaded.processor

    async def generate(self, request: Request) -> Response:
        return await asyncio.to_thread(self._answer, request)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.vision_cache = None
            MODELS.release(self._loaded)

    def _answer(self, request: Request) -> Response:
        frames = sorted(request.frames, key=lambda f: f.time_s)
        with self._loaded.lock:  # latency counts from here: waiting behind other streams' calls is not the model's
            started = time.perf_counter()
            try:
                with torch.inference_mode():
                    return self._run(request, frames, started)
            except torch.OutOfMemoryError as e:
                cause = str(e).split("\n")[0]  # "CUDA out of memory. Tried to allocate ..."
            # freed here, once the handler and its traceback's tensors are gone
            if self.vision_cache is not None:
                self.vision_cache.clear()  # kept frames are GPU memory too; they are encoded again when seen
            _free_cuda_memory()
        route = request.route.lower()
        raise BackendError(
            f"backend=hf: {cause} ({Path(self.cfg.model_path).name}, {request.route}, {len(frames)} frames). Lower "
            f"system.{route}.max_frames or backend.max_pixels, or give the model more GPU memory "
            "(backend.device_map=auto spreads it over every visible GPU)"
        )

    def _run(self, request: Request, frames: list[Frame], started: float) -> Response:
        model, processor = self._loaded.model, self._loaded.processor
        messages = chat_messages(request, self.frames_as)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pixels = [np.ascontiguousarray(f.pixels) for f in frames]
        reuse = self.vision_cache is not None and bool(frames)
        if reuse:
            prepared = self.vision_cache.prepare(text, pixels)  # type: ignore[union-attr]
            inputs: dict[str, Any] = dict(prepared.inputs)
        else:
            inputs = dict(self._processor_inputs(text, frames, pixels))
        input_ids = inputs["input_ids"]
        tokens_in = int(input_ids.shape[1])
        visual_tokens = int(torch.isin(input_ids, torch.tensor(self._visual_ids)).sum()) if self._visual_ids else 0
        self._check_context(request, tokens_in, visual_tokens, len(frames))
        if reuse:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            features = self.vision_cache.features(prepared)  # type: ignore[union-attr]
            inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        clock = _FirstToken()
        greedy = copy.copy(self._loaded.greedy)
        greedy.max_new_tokens = request.max_new_tokens
        scored = {"output_logits": True, "return_dict_in_generate": True} if request.want_confidence else {}
        output = model.generate(**inputs, generation_config=greedy, streamer=clock, **scored)
        sequences = output.sequences if scored else output
        new = sequences[0, tokens_in:].tolist()
        eos = self._loaded.eos_ids
        stopped = bool(new) and new[-1] in eos
        confidence = token_confidence(output.logits, new, eos) if scored else None
        latency = time.perf_counter() - started
        return Response(
            text=processor.tokenizer.decode(new, skip_special_tokens=True),
            tokens_in=tokens_in,
            tokens_out=len(new),  # the end-of-sequence token included, when one was generated
            latency_s=latency,
            finish_reason="stop" if stopped else "length",
            visual_tokens=visual_tokens,
            ttft_s=None if clock.first_s is None else clock.first_s - started,
            confidence=confidence,
        )

    def _processor_inputs(self, text: str, frames: list[Frame], pixels: list[np.ndarray]) -> Any:
        processor = self._loaded.processor
        if not frames:
            return processor(text=[text], return_tensors="pt")
        if self.frames_as == FramesAs.images:
            return processor(text=[text], images=pixels, return_tensors="pt", images_kwargs=self._image_kwargs)
        metadata = {"total_num_frames": len(frames), "fps": _fps(frames), "frames_indices": list(range(len(frames)))}
        videos_kwargs = {**self._video_kwargs, "do_sample_frames": False, "video_metadata": [metadata]}
        return processor(text=[text], videos=[np.stack(pixels)], return_tensors="pt", videos_kwargs=videos_kwargs)

    def _check_context(self, request: Request, tokens_in: int, visual_tokens: int, n_frames: int) -> None:
        needed = tokens_in + request.max_new_tokens
        if needed > self.context_tokens:
            route = request.route.lower()
            raise BackendError(
                f"backend=hf: prompt of {tokens_in} tokens ({visual_tokens} visual, {n_frames} frames) plus "
                f"{request.max_new_tokens} new tokens exceeds the model's context of {self.context_tokens} "
                f"(text_config.max_position_embeddings of {Path(self.cfg.model_path).name}); lower "
                f"system.{route}.max_frames or backend.max_pixels (or system.{route}.max_new_tokens)"
            )


def chat_messages(request: Request, frames_as: FramesAs) -> list[dict[str, Any]]:
    """System, earlier (question, own answer) turns, then the user turn; content always as parts (any template)."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": [_text(request.system)]})
    for turn in request.history:
        messages.append({"role": "user", "content": [_text(turn.question)]})
        messages.append({"role": "assistant", "content": [_text(turn.answer)]})
    messages.append({"role": "user", "content": user_content(request, frames_as)})
    return messages


def user_content(request: Request, frames_as: FramesAs) -> list[dict[str, Any]]:
    """Text memory, then the frames after their stream times ("[12.0 s]", as the openai backend labels them; a
    video after its first and last times), then the prompt."""
    parts: list[dict[str, Any]] = []
    if request.context:
        parts.append(_text("\n".join(request.context)))
    frames = sorted(request.frames, key=lambda f: f.time_s)
    if frames and frames_as == FramesAs.images:
        for frame in frames:
            parts += [_text(f"[{frame.time_s:.1f} s]"), {"type": "image"}]
    elif frames:
        parts += [_text(f"[{frames[0].time_s:.1f} s to {frames[-1].time_s:.1f} s]"), {"type": "video"}]
    parts.append(_text(request.prompt))
    return parts


def token_confidence(logits: tuple[torch.Tensor, ...], new: list[int], eos: frozenset[int]) -> float | None:
    """exp(mean log-probability) of the reply's tokens under the model's raw logits, up to the end token (the end
    token alone when the reply is empty); None when nothing was generated."""
    if not new:
        return None
    answer = next((i for i, token in enumerate(new) if token in eos), len(new)) or 1  # 0: the end token alone
    steps = torch.stack([step[0] for step in logits[:answer]]).float()  # (answer, vocab)
    tokens = torch.tensor(new[:answer], device=steps.device)
    chosen = torch.log_softmax(steps, dim=-1).gather(1, tokens[:, None])
    return float(chosen.mean().exp())


@dataclass
class Loaded:
    """A model and its processor, shared by every backend whose config names them with the same settings."""

    key: tuple[str, ...]
    model: Any
    processor: Any
    greedy: Any  # the checkpoint's GenerationConfig with sampling off
    eos_ids: frozenset[int]
    lock: threading.Lock  # one generate (and one tokenizer call) at a time
    users: int = 0


class Models:
    """Loaded checkpoints by (folder, dtype, device_map, attn_implementation); freed when the last user closes."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, ...], Loaded] = {}
        self._lock = threading.Lock()
        self.loads = 0  # from_pretrained calls in this process (the test of sharing counts them)

    def acquire(self, key: tuple[str, ...], load: Callable[[], Loaded]) -> Loaded:
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load()
                self.loads += 1
            loaded = self._loaded[key]
            loaded.users += 1
            return loaded

    def release(self, loaded: Loaded) -> None:
        with self._lock:
            loaded.users -= 1
            if loaded.users == 0 and self._loaded.get(loaded.key) is loaded:
                del self._loaded[loaded.key]
        if loaded.users == 0:
            _free_cuda_memory()


MODELS = Models()


class _FirstToken:
    """A streamer for generate(): it gets the prompt first, then each new token; the second put is the first token."""

    def __init__(self) -> None:
        self._puts = 0
        self.first_s: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self._puts += 1
        if self._puts == 2:
            self.first_s = time.perf_counter()

    def end(self) -> None:
        pass


def _checkpoint(cfg: HFConfig) -> tuple[Path, str]:
    """The checkpoint folder and its model_type, or a ConfigError naming the key and the fix."""
    folder = require_model_path("hf", cfg.model_path, group="backend")
    from transformers import AutoConfig

    model_type = str(AutoConfig.from_pretrained(folder, local_files_only=True).model_type)
    if model_type not in NATIVE:
        raise ConfigError(
            f"backend=hf: backend.model_path={cfg.model_path} holds a {model_type!r} model; this backend runs "
            f"{', '.join(NATIVE)}. Point backend.model_path at one of those, or serve other models with vLLM and "
            "use backend=openai"
        )
    if cfg.device_map.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"backend=hf: backend.device_map={cfg.device_map} but CUDA is not available; use auto or cpu")
    pixels = {"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels}
    if model_type not in PIXEL_BUDGET and any(v is not None for v in pixels.values()):
        raise ConfigError(
            f"backend=hf: backend.min_pixels / backend.max_pixels apply to {', '.join(PIXEL_BUDGET)} processors; "
            f"{model_type} resizes to its own fixed size: set both to null"
        )
    if any(v is not None and v < 1 for v in pixels.values()) or (
        cfg.min_pixels is not None and cfg.max_pixels is not None and cfg.min_pixels > cfg.max_pixels
    ):
        raise ConfigError(
            f"backend=hf: backend.min_pixels={cfg.min_pixels}, backend.max_pixels={cfg.max_pixels}: both positive "
            "(or null), min_pixels <= max_pixels"
        )
    if cfg.vision_cache_frames < 0:
        raise ConfigError(f"backend=hf: backend.vision_cache_frames={cfg.vision_cache_frames}: must be >= 0 (0: off)")
    return folder, model_type


def _model_key(folder: Path, cfg: HFConfig) -> tuple[str, ...]:
    return (str(folder.resolve()), cfg.dtype.value, cfg.device_map, cfg.attn_implementation.value)


def _load(folder: Path, cfg: HFConfig) -> Loaded:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        model = AutoModelForImageTextToText.from_pretrained(
            folder,
            local_files_only=True,
            dtype=getattr(torch, cfg.dtype.value),
            device_map=cfg.device_map,
            attn_implementation=cfg.attn_implementation.value,
        ).eval()
    except ImportError as e:  # e.g. flash_attention_2 without the flash-attn package
        raise ConfigError(f"backend=hf: loading {folder}: {e}. Use backend.attn_implementation=sdpa") from None
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    greedy = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    greedy.do_sample = False  # the checkpoint's other settings (e.g. repetition_penalty) still apply
    greedy.temperature = greedy.top_p = greedy.top_k = None
    eos = greedy.eos_token_id
    eos_ids = frozenset([] if eos is None else [eos] if isinstance(eos, int) else eos)
    key = _model_key(folder, cfg)
    return Loaded(key, model, processor, greedy, eos_ids, threading.Lock())


def _processor_kwargs(cfg: HFConfig, model_type: str, processor: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-call image and video processor settings: the pixel range where the config sets one."""
    if model_type not in PIXEL_BUDGET:
        return {}, {}
    images: dict[str, Any] = {}
    videos: dict[str, Any] = {"cap_pixels_per_frame": False}  # the per-frame range only; frames are counted upstream
    for kwargs, sub in ((images, processor.image_processor), (videos, getattr(processor, "video_processor", None))):
        if sub is None or (cfg.min_pixels is None and cfg.max_pixels is None):
            continue
        low = sub.size["shortest_edge"] if cfg.min_pixels is None else cfg.min_pixels
        high = sub.size["longest_edge"] if cfg.max_pixels is None else cfg.max_pixels
        if cfg.min_pixels is None:  # the processor's own bound gives way to the one the config sets
            low = min(low, high)
        if cfg.max_pixels is None:
            high = max(low, high)
        kwargs["size"] = {"shortest_edge": low, "longest_edge": high}
    return images, videos


def _free_cuda_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fps(frames: list[Frame]) -> float:
    """The frames' rate as a video (Qwen2.5-VL's temporal positions follow it): frames over their time span."""
    span = frames[-1].time_s - frames[0].time_s
    return (len(frames) - 1) / span if len(frames) > 1 and span > 0 else 1.0


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}
