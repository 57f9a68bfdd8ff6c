"""vLLM's async engine in this process (`backend=vllm`): every stream's query goes straight to one engine, so many
are in flight at once and share its batches and its prefix cache.

The prompt is the model's own chat template (its processor's `apply_chat_template`) over the same parts the openai
backend sends: system, earlier turns, text memory, then each frame as an image after its stream time, then the
prompt. Decoding is greedy. Per call: prompt tokens and the image tokens among them, new tokens, time to first token
(measured on the engine's output stream) and wall latency; asked for a confidence, the sampled tokens'
log-probabilities too (`SamplingParams(logprobs=0)`), and their exp(mean).

The engine runs on an event loop of its own, in a thread: vLLM binds its output task to the loop it starts on, and
each job of a sweep runs in its own `asyncio.run`. So one engine serves every job of the process whose engine
settings are equal (S1 and S2 configs that differ only in per-call settings share it too); a job's `aclose` lets go
of it, and engines stop at process exit or on SIGTERM, or when one with other settings is needed while this one is
idle (one model on the accelerator at a time). vllm is imported only when an engine starts: the main venv has none
(`make test-vllm` builds one that has).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backends.base import BACKENDS
from backends.vllm_server import on_exit
from harness.encoders.checkpoint import require_model_path
from harness.errors import BackendError, ConfigError
from harness.records import Frame, Request, Response

log = logging.getLogger(__name__)

CONTEXT_HINT = (
    " (fix: fewer or smaller frames, e.g. lower system.s2.max_frames or backend.image_max_side, "
    "or raise backend.max_model_len)"
)
DEFAULT_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}


@dataclass(frozen=True)
class VLLMEngineConfig:
    name: str = "vllm"
    model_path: str = ""  # a local model folder (config.json, weights, processor); nothing is downloaded
    dtype: str = "auto"
    max_model_len: int | None = None  # None: the model's own
    max_num_seqs: int | None = None  # None: vLLM's default
    limit_mm_per_prompt: dict[str, int] = field(default_factory=lambda: {"image": 32})  # frames are images
    enable_prefix_caching: bool = True  # a stream's queries share their system prompt and early frames
    enforce_eager: bool = False  # True: no graph capture (faster start, slower steps)
    gpu_memory_utilization: float = 0.9
    seed: int = 0
    engine_args: dict[str, Any] = field(default_factory=dict)  # more vllm AsyncEngineArgs fields, by name
    env: dict[str, str] = field(default_factory=dict)  # set before the engine starts, e.g. VLLM_CPU_KVCACHE_SPACE
    image_max_side: int = 768  # frames are shrunk so the longer side is at most this (never enlarged)

    def __post_init__(self) -> None:
        where = "backend=vllm"
        for key, value in self.limit_mm_per_prompt.items():
            if value < 0:
                raise ConfigError(f"{where}: backend.limit_mm_per_prompt.{key}={value} must be >= 0")
        own = {"model", "dtype", "max_model_len", "max_num_seqs", "limit_mm_per_prompt", "enable_prefix_caching"}
        clash = sorted(own & set(self.engine_args))
        if clash:
            raise ConfigError(f"{where}: backend.engine_args sets {', '.join(clash)}; use the backend key of that name")
        if self.image_max_side < 1:
            raise ConfigError(f"{where}: backend.image_max_side={self.image_max_side} must be >= 1")


@BACKENDS.register("vllm", VLLMEngineConfig)
class VLLMEngine:
    """One greedy generation per request on a shared in-process engine."""

    takes_audio = False
    gives_confidence = True

    def __init__(self, cfg: VLLMEngineConfig) -> None:
        self.cfg = cfg
        self._engine: _Engine | None = acquire(cfg)

    async def generate(self, request: Request) -> Response:
        engine = self._engine
        if engine is None:
            raise BackendError("vllm backend: generate after aclose")
        started = time.perf_counter()
        prompt, images = await asyncio.to_thread(engine.prompt, request, self.cfg.image_max_side)
        run = engine.run(prompt, images, request.max_new_tokens, request.want_confidence)
        future = asyncio.run_coroutine_threadsafe(run, engine.loop)
        try:
            final, first_token_at = await asyncio.wrap_future(future)
        except (BackendError, asyncio.CancelledError):
            raise
        except Exception as e:  # vLLM's own errors: too long a prompt, too many images, a dead engine, OOM
            raise BackendError(_describe(e)) from None
        output = final.outputs[0]
        prompt_ids = list(final.prompt_token_ids or [])
        return Response(
            text=output.text,
            tokens_in=len(prompt_ids),
            tokens_out=len(output.token_ids),
            latency_s=time.perf_counter() - started,
            finish_reason=output.finish_reason or "unknown",
            visual_tokens=sum(1 for t in prompt_ids if t in engine.image_token_ids),
            ttft_s=None if first_token_at is None else first_token_at - started,
            confidence=sampled_confidence(output) if request.want_confidence else None,
        )

    async def aclose(self) -> None:
        """Lets go of the engine; it stays up for the next job with equal settings (stopped at process exit)."""
        if self._engine is not None:
            release(self._engine)
            self._engine = None


def hf_messages(request: Request, image_max_side: int) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """Chat messages for a processor's chat template, and the frames as images in the order of their parts."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for turn in request.history:
        messages.append({"role": "user", "content": turn.question})
        messages.append({"role": "assistant", "content": turn.answer})
    parts: list[dict[str, Any]] = []
    images: list[Image.Image] = []
    if request.context:
        parts.append({"type": "text", "text": "\n".join(request.context)})
    for frame in sorted(request.frames, key=lambda f: f.time_s):
        parts.append({"type": "text", "text": f"[{frame.time_s:.1f} s]"})
        parts.append({"type": "image"})
        images.append(frame_image(frame, image_max_side))
    parts.append({"type": "text", "text": request.prompt})
    messages.append({"role": "user", "content": parts})
    return messages, images


def sampled_confidence(output: Any) -> float | None:
    """exp(mean log-probability) of a CompletionOutput's sampled tokens (`logprobs[i][token_ids[i]]`), leaving out
    the end or stop token the engine keeps in token_ids unless it is the whole reply; None without log-probabilities."""
    tokens = list(output.token_ids)
    if output.finish_reason == "stop" and not isinstance(output.stop_reason, str) and len(tokens) > 1:
        tokens = tokens[:-1]  # stopped on the end token (stop_reason None) or a stop token id
    if not tokens or not output.logprobs:
        return None
    values = [output.logprobs[i][token].logprob for i, token in enumerate(tokens)]
    return math.exp(sum(values) / len(values))


def frame_image(frame: Frame, max_side: int) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(frame.pixels))
    scale = max_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


# ---- engines, one per distinct engine config, for the whole process


class _Engine:
    """An AsyncLLM on its own event loop thread, with the processor whose chat template builds the prompts."""

    def __init__(self, cfg: VLLMEngineConfig, key: str) -> None:
        from transformers import AutoProcessor

        self.key = key
        self.users = 0
        self.processor = AutoProcessor.from_pretrained(Path(cfg.model_path).expanduser())
        if not getattr(self.processor, "chat_template", None):
            raise ConfigError(f"backend=vllm: {cfg.model_path} has no chat template in its processor files")
        for name, value in {**DEFAULT_ENV, **cfg.env}.items():
            if name in cfg.env or name not in os.environ:
                os.environ[name] = str(value)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        try:
            self.engine = asyncio.run_coroutine_threadsafe(_start_engine(cfg), self.loop).result()
        except BaseException:
            self._stop_loop()
            raise
        hf_config = self.engine.model_config.hf_config
        ids = {getattr(hf_config, "image_token_id", None), getattr(hf_config, "image_token_index", None)}
        token = getattr(self.processor, "image_token", None)
        if token is not None:
            ids.add(self.processor.tokenizer.convert_tokens_to_ids(token))
        self.image_token_ids = frozenset(i for i in ids if isinstance(i, int))

    def prompt(self, request: Request, image_max_side: int) -> tuple[str, list[Image.Image]]:
        messages, images = hf_messages(request, image_max_side)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, images

    async def run(
        self, prompt: str, images: list[Image.Image], max_tokens: int, logprobs: bool = False
    ) -> tuple[Any, float | None]:
        """On the engine's loop: the final output, and when the first token arrived (perf_counter)."""
        from vllm import SamplingParams

        # logprobs=0: the sampled token's log-probability only, no alternatives
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0 if logprobs else None)
        inputs: dict[str, Any] = {"prompt": prompt}
        if images:
            inputs["multi_modal_data"] = {"image": images}
        final, first_token_at = None, None
        async for output in self.engine.generate(inputs, params, uuid.uuid4().hex):
            if first_token_at is None and output.outputs and output.outputs[0].token_ids:
                first_token_at = time.perf_counter()
            final = output
        if final is None or not final.outputs:
            raise BackendError("vllm backend: the engine finished the request without an output")
        return final, first_token_at

    def shutdown(self) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(_shutdown(self.engine), self.loop).result(timeout=120)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)


async def _start_engine(cfg: VLLMEngineConfig) -> Any:
    from vllm import AsyncEngineArgs, AsyncLLMEngine

    args = AsyncEngineArgs(
        model=str(Path(cfg.model_path).expanduser()),
        dtype=cfg.dtype,
        max_model_len=cfg.max_model_len,
        max_num_seqs=cfg.max_num_seqs,
        limit_mm_per_prompt=dict(cfg.limit_mm_per_prompt),
        enable_prefix_caching=cfg.enable_prefix_caching,
        enforce_eager=cfg.enforce_eager,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        seed=cfg.seed,
        disable_log_stats=True,
        **dict(cfg.engine_args),
    )
    return AsyncLLMEngine.from_engine_args(args)


async def _shutdown(engine: Any) -> None:
    engine.shutdown()


_ENGINES: dict[str, _Engine] = {}
_LOCK = threading.RLock()


def engine_key(cfg: VLLMEngineConfig) -> str:
    """What makes two configs need different engines; image_max_side is per call."""
    fields = {k: v for k, v in vars(cfg).items() if k not in ("name", "image_max_side")}
    fields["model_path"] = str(Path(cfg.model_path).expanduser().resolve())
    return json.dumps(fields, sort_keys=True, default=str)


def acquire(cfg: VLLMEngineConfig) -> _Engine:
    require_model_path("vllm", cfg.model_path, group="backend")
    key = engine_key(cfg)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is not None and engine.engine.errored:
            log.warning("vllm backend: the engine for %s had died; starting a new one", cfg.model_path)
            stop(engine)
            engine = None
        if engine is None:
            for idle in [e for e in _ENGINES.values() if e.users == 0]:
                log.info("vllm backend: stopping an idle engine before starting one with other settings")
                stop(idle)
            on_exit(stop_all)
            log.info("vllm backend: starting an engine on %s", cfg.model_path)
            engine = _ENGINES[key] = _Engine(cfg, key)
        engine.users += 1
        return engine


def release(engine: _Engine) -> None:
    with _LOCK:
        engine.users = max(0, engine.users - 1)


def stop(engine: _Engine) -> None:
    with _LOCK:
        _ENGINES.pop(engine.key, None)
    try:
        engine.shutdown()
    except Exception as e:  # at exit, or after the engine died: nothing left to save
        log.warning("vllm backend: engine shutdown: %s: %s", type(e).__name__, e)


def stop_all() -> None:
    """Shut every engine of this process down (at exit and on SIGTERM)."""
    with _LOCK:
        for engine in list(_ENGINES.values()):
            stop(engine)


def _describe(error: BaseException) -> str:
    cause = error.__cause__ if type(error).__name__ == "EngineGenerateError" and error.__cause__ else error
    text = f"vllm backend: {type(cause).__name__}: {cause}".strip()
    if "maximum model length" in text or "maximum context length" in text or "max_model_len" in text:
        text += CONTEXT_HINT
    elif type(cause).__name__ == "EngineDeadError":
        text += " (the engine process died, see the log above; later queries of this job fail too)"
    elif "out of memory" in text.lower():
        text += " (fix: lower backend.max_num_seqs or backend.gpu_memory_utilization, or fewer frames per query)"
    return text
