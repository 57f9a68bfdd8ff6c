"""OpenAI chat completions, and any server that speaks the same API (`vllm serve`, e.g. a judge model).

Translates `Request -> chat.completions.create -> Response` and turns SDK failures into BackendError.
The SDK's own retries are off: retrying belongs to the harness, where every attempt is counted. The API
key is read from the environment variable the config names; it is never stored in a config, a record,
a log line or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from omegaconf import MISSING
from PIL import Image

from backends.base import BACKENDS
from harness.errors import BackendError, ConfigError
from harness.records import Frame, Request, Response

OPENAI_API_URL = "https://api.openai.com/v1"
JPEG_QUALITY = 90
MAX_ERROR_CHARS = 300  # of the server's own error message, in BackendError


class ImageFormat(str, Enum):
    jpeg = "jpeg"
    png = "png"


class ImageDetail(str, Enum):
    low = "low"  # OpenAI: one 512 px tile, cheapest
    high = "high"
    auto = "auto"  # the server decides


@dataclass(frozen=True)
class OpenAIConfig:
    name: str = "openai"
    model: str = MISSING  # e.g. "gpt-4o-2024-08-06", or the model a vLLM server was started with
    # None: the OpenAI API (OPENAI_BASE_URL is not read: the config, which is hashed, says where answers come from);
    # "http://127.0.0.1:8000/v1" for a local server
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the variable that holds the key; the key itself is never in a config
    temperature: float = 0.0
    image_format: ImageFormat = ImageFormat.jpeg
    image_max_side: int = 768  # frames are shrunk so the longer side is at most this (never enlarged)
    image_detail: ImageDetail = ImageDetail.auto
    timeout_s: float = 120.0  # per call


@BACKENDS.register("openai", OpenAIConfig)
class OpenAIChat:
    """One chat completion per request: system, earlier turns, then text memory, timed frames and the prompt."""

    takes_audio = False

    def __init__(self, cfg: OpenAIConfig) -> None:
        import openai

        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            where = cfg.base_url or "the OpenAI API"
            raise ConfigError(
                f"openai backend: the environment variable {cfg.api_key_env} is not set or empty. Export it with "
                f"the API key for {where} (a local server started without --api-key accepts any non-empty "
                "value), or point backend.api_key_env at the variable that holds the key"
            )
        self.cfg = cfg
        self._key = key  # kept only to scrub it from error messages
        self._client = openai.AsyncOpenAI(
            api_key=key, base_url=cfg.base_url or OPENAI_API_URL, max_retries=0, timeout=cfg.timeout_s
        )

    async def generate(self, request: Request) -> Response:
        import openai

        started = time.perf_counter()
        messages = await asyncio.to_thread(chat_messages, request, self.cfg)  # image encoding is CPU work
        try:
            reply = await self._client.chat.completions.create(
                model=self.cfg.model,
                messages=messages,  # type: ignore[arg-type]
                max_completion_tokens=request.max_new_tokens,
                temperature=self.cfg.temperature,
            )
        except openai.OpenAIError as e:
            raise BackendError(self._describe(e)) from None  # no chained SDK error: its text may hold anything
        if not reply.choices:
            raise BackendError(f"openai backend: the server returned no choices for model {self.cfg.model!r}")
        choice, usage = reply.choices[0], reply.usage
        return Response(
            text=choice.message.content or "",
            tokens_in=usage.prompt_tokens if usage is not None else 0,  # servers that omit usage count as 0
            tokens_out=usage.completion_tokens if usage is not None else 0,
            latency_s=time.perf_counter() - started,
            finish_reason=choice.finish_reason or "unknown",  # "stop", "length" (cut at max tokens), ...
        )

    async def aclose(self) -> None:
        await self._client.close()

    def _describe(self, error: Exception) -> str:
        """The error class, HTTP status and error type, and the server's short message, without the key."""
        import openai

        if isinstance(error, openai.APIStatusError):
            body = error.body
            detail = body.get("message") if isinstance(body, dict) else body
            kind = error.type or error.code
            head = f"{type(error).__name__} (HTTP {error.status_code}{f', {kind}' if kind else ''})"
            text = f"openai backend: {head} from {self.cfg.base_url or 'the OpenAI API'}: {detail or error.message}"
        elif isinstance(error, openai.APIConnectionError):  # timeouts included
            text = f"openai backend: {type(error).__name__} to {self.cfg.base_url or 'the OpenAI API'}: {error.message}"
        else:
            text = f"openai backend: {type(error).__name__}: {error}"
        return _shorten(text.replace(self._key, "[key]"))


def chat_messages(request: Request, cfg: OpenAIConfig) -> list[dict[str, Any]]:
    """The chat messages of one request: system, earlier (question, own answer) turns, then the user turn."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for turn in request.history:
        messages.append({"role": "user", "content": turn.question})
        messages.append({"role": "assistant", "content": turn.answer})
    messages.append({"role": "user", "content": user_content(request, cfg)})
    return messages


def user_content(request: Request, cfg: OpenAIConfig) -> str | list[dict[str, Any]]:
    """Text memory, then each frame after its stream time ("[12.0 s]"), then the prompt.

    A prompt alone goes as a plain string, which every OpenAI-compatible server accepts (judges send that).
    """
    if not request.frames and not request.context:
        return request.prompt
    parts: list[dict[str, Any]] = []
    if request.context:
        parts.append({"type": "text", "text": "\n".join(request.context)})
    for frame in sorted(request.frames, key=lambda f: f.time_s):
        parts.append({"type": "text", "text": f"[{frame.time_s:.1f} s]"})
        url = image_data_url(frame, cfg.image_format, cfg.image_max_side)
        parts.append({"type": "image_url", "image_url": {"url": url, "detail": cfg.image_detail.value}})
    parts.append({"type": "text", "text": request.prompt})
    return parts


def image_data_url(frame: Frame, image_format: ImageFormat, max_side: int) -> str:
    """A base64 data URL of the frame, shrunk so its longer side is at most max_side."""
    image = Image.fromarray(np.ascontiguousarray(frame.pixels))
    scale = max_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if image_format == ImageFormat.jpeg:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG")
    return f"data:image/{image_format.value};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
