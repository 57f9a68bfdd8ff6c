"""OpenAI chat completions, and any server that speaks the same API (`vllm serve`, e.g. a judge model).

Translates `Request -> chat.completions body` and the SDK's failures into ProviderError kinds; the key check,
response cache, rate limits, retries and cost are the shared `ApiBackend` (backends/api.py). The SDK's own
retries are off: retrying belongs to the harness, where every attempt is counted. The API key is read from
the environment variable the config names; it is never stored in a config, a record, a log line or an error.
Asked for a confidence, the request sets `logprobs` and the reply's confidence is exp(mean log-probability) of
its tokens; a server that returns none leaves it None.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from omegaconf import MISSING
from PIL import Image

from backends.api import (
    ApiBackend,
    ApiConfig,
    ProviderError,
    Reply,
    image_side,
    request_texts,
    retry_after_s,
    status_kind,
)
from backends.base import BACKENDS
from harness.records import Frame, Request

if TYPE_CHECKING:
    from backends.openai_batch import OpenAIBatches

OPENAI_API_URL = "https://api.openai.com/v1"
JPEG_QUALITY = 90
CHARS_PER_TOKEN = 4  # English text, for estimates only (the reply's usage is what gets recorded)
MESSAGE_TOKENS = 4  # per chat message (role and separators), plus REPLY_PRIMING_TOKENS per request
REPLY_PRIMING_TOKENS = 3
MAX_PATCHES = 1536  # the patches rule's cap per image


class ImageFormat(str, Enum):
    jpeg = "jpeg"
    png = "png"


class ImageDetail(str, Enum):
    low = "low"  # OpenAI: one 512 px tile, cheapest
    high = "high"
    auto = "auto"  # the server decides (estimated as high)


class ImageTokenRule(str, Enum):
    tiles = "tiles"  # fit in 2048 px, shorter side to 768 px, base + per_tile per 512 px tile (gpt-4o, gpt-4.1)
    patches = "patches"  # 32 px patches, at most 1536, times a multiplier (gpt-4.1-mini, gpt-4.1-nano, o4-mini)


@dataclass(frozen=True)
class ImageTokensConfig:
    """How the provider counts a frame's input tokens; for run.estimate and the limits, never for answers."""

    rule: ImageTokenRule = ImageTokenRule.tiles
    base: int = 85  # tiles: per image (all of a low-detail image); gpt-4o-mini: 2833
    per_tile: int = 170  # tiles: per 512 px tile; gpt-4o-mini: 5667
    multiplier: float = 1.0  # patches: tokens per patch (gpt-4.1-mini 1.62, gpt-4.1-nano 2.46, o4-mini 1.72)


@dataclass(frozen=True)
class OpenAIConfig(ApiConfig):
    name: str = "openai"
    model: str = MISSING  # e.g. "gpt-4o-2024-08-06", or the model a vLLM server was started with
    # None: the OpenAI API (OPENAI_BASE_URL is not read: the config says where answers come from);
    # "http://127.0.0.1:8000/v1" for a local server
    api_key_env: str = "OPENAI_API_KEY"  # the variable that holds the key; the key itself is never in a config
    image_format: ImageFormat = ImageFormat.jpeg
    image_max_side: int = 768  # frames are shrunk so the longer side is at most this (never enlarged)
    image_detail: ImageDetail = ImageDetail.auto
    image_tokens: ImageTokensConfig = field(default_factory=ImageTokensConfig)

    run_only: ClassVar[frozenset[str]] = ApiConfig.run_only | {"image_tokens"}


@BACKENDS.register("openai", OpenAIConfig)
class OpenAIChat(ApiBackend):
    """One chat completion per request: system, earlier turns, then text memory, timed frames and the prompt."""

    provider = "openai"
    gives_confidence = True  # where the server returns log-probabilities; reasoning models refuse `logprobs`
    cfg: OpenAIConfig

    def __init__(self, cfg: OpenAIConfig) -> None:
        import openai

        super().__init__(cfg)
        self._client = openai.AsyncOpenAI(
            api_key=self._key, base_url=cfg.base_url or OPENAI_API_URL, max_retries=0, timeout=cfg.timeout_s
        )

    def payload(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": chat_messages(request, self.cfg),
            "max_completion_tokens": request.max_new_tokens,
        }
        if self.cfg.capabilities.temperature:
            body["temperature"] = self.cfg.temperature
        if request.want_confidence:
            body["logprobs"] = True
        if self.cfg.capabilities.max_image_bytes is not None:
            for frame, url in zip(sorted(request.frames, key=lambda f: f.time_s), _image_urls(body), strict=True):
                self.check_image_bytes(len(base64.b64decode(url.split(",", 1)[1])), frame)
        return body

    async def send(self, payload: dict[str, Any]) -> Reply:
        with sdk_errors(self.where, self.cfg.timeout_s):
            reply = await self._client.chat.completions.create(**payload)
        return parse_completion(reply, self.where, self.cfg.model)

    def batch_transport(self) -> OpenAIBatches:
        from backends.openai_batch import OpenAIBatches

        return OpenAIBatches(self._client, self.where, self.cfg.timeout_s, self.cfg.model)

    @property
    def where(self) -> str:
        return self.cfg.base_url or "the OpenAI API"

    def estimate_tokens(self, request: Request) -> int:
        """Text at CHARS_PER_TOKEN, per-message overhead, and each frame by the configured image rule."""
        texts = request_texts(request)
        texts += [f"[{f.time_s:.1f} s]" for f in request.frames]
        messages = 1 + bool(request.system) + 2 * len(request.history)
        side = image_side(self.cfg, self.cfg.image_max_side)
        images = sum(
            image_tokens(*_shrunk(f.pixels.shape[1], f.pixels.shape[0], side), self.cfg.image_detail,
                         self.cfg.image_tokens)
            for f in request.frames
        )  # fmt: skip
        text = sum(math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts if t)
        return text + MESSAGE_TOKENS * messages + REPLY_PRIMING_TOKENS + images

    async def aclose(self) -> None:
        await super().aclose()
        await self._client.close()


@contextmanager
def sdk_errors(where: str, timeout_s: float) -> Iterator[None]:
    """The openai SDK's failures inside the block as ProviderError kinds (messages without the key)."""
    import openai

    try:
        yield
    except openai.APIStatusError as e:
        body = e.body
        detail = body.get("message") if isinstance(body, dict) else body
        error_type = e.type or e.code
        head = f"{type(e).__name__} (HTTP {e.status_code}{f', {error_type}' if error_type else ''})"
        quota = "insufficient_quota" in (e.code, e.type)  # an empty balance: waiting never helps
        kind = "client" if quota else status_kind(e.status_code)
        message = f"{head} from {where}: {detail or e.message}"
        raise ProviderError(kind, e.status_code, message, retry_after_s(e.response.headers)) from None
    except openai.APITimeoutError:
        raise ProviderError("timeout", None, f"APITimeoutError: no reply from {where} within {timeout_s:g} s") from None
    except openai.APIConnectionError as e:
        raise ProviderError("server", None, f"{type(e).__name__} to {where}: {e.message}") from None
    except (json.JSONDecodeError, openai.APIResponseValidationError) as e:
        raise ProviderError("server", 200, f"malformed reply from {where}: {type(e).__name__}: {e}") from None


def parse_completion(reply: Any, where: str, model: str) -> Reply:
    """The first choice's text, the usage, the finish reason and, where it has log-probabilities, the confidence."""
    choices = getattr(reply, "choices", None)
    if not choices or getattr(choices[0], "message", None) is None:
        raise ProviderError("server", 200, f"a reply without choices from {where} for model {model!r}")
    choice, usage = choices[0], reply.usage
    return Reply(
        text=choice.message.content or "",
        tokens_in=usage.prompt_tokens if usage is not None else 0,  # servers that omit usage count as 0
        tokens_out=usage.completion_tokens if usage is not None else 0,
        finish_reason=choice.finish_reason or "unknown",  # "stop", "length" (cut at max tokens), ...
        confidence=_confidence(getattr(choice, "logprobs", None)),
    )


def _confidence(logprobs: Any) -> float | None:
    """exp(mean log-probability) of a choice's tokens (`logprobs.content[*].logprob`); None without any."""
    tokens = getattr(logprobs, "content", None) or []
    values = [t.logprob for t in tokens if getattr(t, "logprob", None) is not None]
    return math.exp(sum(values) / len(values)) if values else None


@lru_cache(maxsize=256)
def image_tokens(width: int, height: int, detail: ImageDetail, rule: ImageTokensConfig) -> int:
    """Input tokens of one image of this size, by OpenAI's published counting rules."""
    if rule.rule == ImageTokenRule.patches:
        if math.ceil(width / 32) * math.ceil(height / 32) > MAX_PATCHES:  # shrunk to whole patches within the cap
            scale = math.sqrt(32 * 32 * MAX_PATCHES / (width * height))
            scale *= min(math.floor(width * scale / 32) / (width * scale / 32),
                         math.floor(height * scale / 32) / (height * scale / 32))  # fmt: skip
            width, height = width * scale, height * scale
        patches = math.ceil(width / 32 - 1e-9) * math.ceil(height / 32 - 1e-9)
        return math.ceil(min(patches, MAX_PATCHES) * rule.multiplier)
    if detail == ImageDetail.low:
        return rule.base
    scale = min(1.0, 2048 / max(width, height))  # fit in a 2048 px square
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))  # then the shorter side to 768 px
    width, height = width * scale, height * scale
    return rule.base + rule.per_tile * math.ceil(width / 512) * math.ceil(height / 512)


def _shrunk(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size `image_data_url` sends a frame at."""
    scale = max_side / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def _image_urls(body: dict[str, Any]) -> list[str]:
    content = body["messages"][-1]["content"]
    return [p["image_url"]["url"] for p in content if p["type"] == "image_url"] if isinstance(content, list) else []


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
        url = image_data_url(frame, cfg.image_format, image_side(cfg, cfg.image_max_side))
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
