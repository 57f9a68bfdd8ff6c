"""Anthropic's Messages API through the official `anthropic` SDK, frames as base64 image blocks.

Translates `Request -> messages.create body` and the SDK's failures into ProviderError kinds; the key check,
response cache, rate limits, retries and cost are the shared `ApiBackend` (backends/api.py). The SDK's own
retries are off (max_retries=0). base_url is always passed, so ANTHROPIC_BASE_URL is never read: the config
says where answers come from.
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
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import MISSING
from PIL import Image

from backends.api import (
    ApiBackend,
    ApiConfig,
    CapabilitiesConfig,
    ProviderError,
    Reply,
    image_side,
    request_texts,
    retry_after_s,
    status_kind,
)
from backends.base import BACKENDS
from harness.records import Frame, Request, Turn

if TYPE_CHECKING:
    from backends.anthropic_batch import AnthropicBatches

ANTHROPIC_API_URL = "https://api.anthropic.com"  # the SDK appends /v1/messages
JPEG_QUALITY = 90
SHRINK_STEPS = 4  # at most this many smaller encodings of a frame over max_image_bytes
PIXELS_PER_TOKEN = 750  # Anthropic's published estimate: tokens = width * height / 750
CHARS_PER_TOKEN = 4  # English text, for estimates only (the reply's usage is what gets recorded)
EMPTY_ANSWER = "(no answer)"  # the API refuses empty text blocks; an earlier empty answer is sent as this
SAMPLING = frozenset({"temperature", "top_p", "top_k"})  # not parameters of the SDK's create(): sent as extra_body
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "refusal": "content_filter"}


class Thinking(str, Enum):
    default = "default"  # send no `thinking`: the model's own default (Claude 5.x: adaptive thinking on)
    disabled = "disabled"  # refused (400) by Claude Sonnet 5.5, Opus 5.5 and Fable 5.1
    adaptive = "adaptive"
    between_tools = "between_tools"  # Sonnet 5.5: no thinking before the first answer


class Effort(str, Enum):
    low = "low"
    medium = "medium"
    high = "high"
    xhigh = "xhigh"
    max = "max"


@dataclass(frozen=True)
class AnthropicConfig(ApiConfig):
    name: str = "anthropic"
    model: str = MISSING  # e.g. "claude-sonnet-5-5"
    api_key_env: str = "ANTHROPIC_API_KEY"
    image_max_side: int = 1568  # frames shrunk so the longer side is at most this (larger ones the API shrinks)
    thinking: Thinking = Thinking.default
    effort: Effort | None = None  # output_config.effort; None: the model's default
    # thinking counts against max_tokens: this many tokens are added to the request's max_new_tokens, so that
    # a model that thinks first still has room for a short answer
    thinking_tokens: int = 0
    capabilities: CapabilitiesConfig = field(
        default_factory=lambda: CapabilitiesConfig(
            max_images=100, max_image_side=8000, max_image_bytes=5_242_880, temperature=False
        )
    )


@BACKENDS.register("anthropic", AnthropicConfig)
class AnthropicMessages(ApiBackend):
    """One message per request: system on top, earlier turns, then text memory, timed frames and the prompt."""

    provider = "anthropic"
    cfg: AnthropicConfig

    def __init__(self, cfg: AnthropicConfig) -> None:
        import anthropic

        super().__init__(cfg)
        self._client = anthropic.AsyncAnthropic(
            api_key=self._key, base_url=cfg.base_url or ANTHROPIC_API_URL, max_retries=0, timeout=cfg.timeout_s
        )

    def payload(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "max_tokens": request.max_new_tokens + self.cfg.thinking_tokens,
            "messages": [*history_messages(request.history), {"role": "user", "content": self._user(request)}],
        }
        if request.system:
            body["system"] = request.system
        if self.cfg.capabilities.temperature:
            body["temperature"] = self.cfg.temperature
        if self.cfg.thinking != Thinking.default:
            body["thinking"] = {"type": self.cfg.thinking.value}
        if self.cfg.effort is not None:
            body["output_config"] = {"effort": self.cfg.effort.value}
        return body

    async def send(self, payload: dict[str, Any]) -> Reply:
        # SDK 2.12.0's create() has no sampling parameters (Claude 5.x refuses them); a model that takes a
        # temperature gets it in the body all the same
        extra = {k: v for k, v in payload.items() if k in SAMPLING}
        with sdk_errors(self.where, self.cfg.timeout_s):
            message = await self._client.messages.create(
                **{k: v for k, v in payload.items() if k not in SAMPLING}, extra_body=extra or None
            )
        return parse_message(message, self.where)

    def batch_transport(self) -> AnthropicBatches:
        from backends.anthropic_batch import AnthropicBatches

        return AnthropicBatches(self._client, self.where, self.cfg.timeout_s)

    @property
    def where(self) -> str:
        return self.cfg.base_url or "the Anthropic API"

    def estimate_tokens(self, request: Request) -> int:
        """Text at CHARS_PER_TOKEN and each frame at width * height / 750 of the size it is sent at (estimates)."""
        texts = request_texts(request) + [f"[{f.time_s:.1f} s]" for f in request.frames]
        side = image_side(self.cfg, self.cfg.image_max_side)
        images = sum(math.ceil(w * h / PIXELS_PER_TOKEN) for w, h in (shrunk_size(f, side) for f in request.frames))
        return sum(math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts if t) + images

    async def aclose(self) -> None:
        await super().aclose()
        await self._client.close()

    def _user(self, request: Request) -> str | list[dict[str, Any]]:
        """Text memory, then each frame after its stream time ("[12.0 s]"), then the prompt; a prompt alone
        goes as a plain string."""
        if not request.frames and not request.context:
            return request.prompt
        blocks: list[dict[str, Any]] = []
        if request.context:
            blocks.append({"type": "text", "text": "\n".join(request.context)})
        side = image_side(self.cfg, self.cfg.image_max_side)
        for frame in sorted(request.frames, key=lambda f: f.time_s):
            data = base64.b64encode(fit_jpeg(frame, side, self.cfg.capabilities.max_image_bytes, b64=True))
            self.check_image_bytes(len(data), frame)  # the API's 5 MB is of the base64 text
            source = {"type": "base64", "media_type": "image/jpeg", "data": data.decode("ascii")}
            blocks.append({"type": "text", "text": f"[{frame.time_s:.1f} s]"})
            blocks.append({"type": "image", "source": source})
        blocks.append({"type": "text", "text": request.prompt})
        return blocks


@contextmanager
def sdk_errors(where: str, timeout_s: float) -> Iterator[None]:
    """The anthropic SDK's failures inside the block as ProviderError kinds (messages without the key)."""
    import anthropic

    try:
        yield
    except anthropic.APIStatusError as e:
        kind = e.type or (e.body.get("error", {}).get("type") if isinstance(e.body, dict) else None)
        head = f"{type(e).__name__} (HTTP {e.status_code}{f', {kind}' if kind else ''})"
        message = f"{head} from {where}: {e.api_message or e.message}"
        raise ProviderError(
            status_kind(e.status_code), e.status_code, message, retry_after_s(e.response.headers)
        ) from None
    except anthropic.APITimeoutError:
        raise ProviderError("timeout", None, f"APITimeoutError: no reply from {where} within {timeout_s:g} s") from None
    except anthropic.APIConnectionError as e:
        raise ProviderError("server", None, f"{type(e).__name__} to {where}: {e.message}") from None
    except (json.JSONDecodeError, anthropic.APIResponseValidationError) as e:
        raise ProviderError("server", 200, f"malformed reply from {where}: {type(e).__name__}: {e}") from None


def history_messages(history: tuple[Turn, ...]) -> list[dict[str, Any]]:
    """Earlier (question, own answer) turns as alternating user / assistant messages."""
    messages: list[dict[str, Any]] = []
    for turn in history:
        messages.append({"role": "user", "content": turn.question})
        messages.append({"role": "assistant", "content": turn.answer or EMPTY_ANSWER})
    return messages


def parse_message(message: Any, where: str) -> Reply:
    """The text blocks (thinking blocks left out), the usage and the stop reason in the harness's words."""
    content = getattr(message, "content", None)
    usage = getattr(message, "usage", None)
    if content is None or usage is None:
        raise ProviderError("server", 200, f"malformed reply from {where}: a message without content or usage")
    text = "".join(block.text for block in content if getattr(block, "type", None) == "text")
    cached = (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    stop = message.stop_reason or "unknown"
    return Reply(
        text=text,
        tokens_in=usage.input_tokens + cached,
        tokens_out=usage.output_tokens,  # thinking included: it is billed as output
        finish_reason=FINISH.get(stop, stop),
    )


def shrunk_size(frame: Frame, max_side: int) -> tuple[int, int]:
    """(width, height) of the frame shrunk so its longer side is at most max_side (never enlarged)."""
    height, width = frame.pixels.shape[:2]
    scale = max_side / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_jpeg(frame: Frame, max_side: int, max_bytes: int | None, b64: bool = False) -> bytes:
    """The frame as JPEG, longer side at most max_side; shrunk further (SHRINK_STEPS at most) while its size
    (of the base64 text when b64) is over max_bytes. Still over after that: the caller refuses it."""
    image = Image.fromarray(np.ascontiguousarray(frame.pixels))
    size = shrunk_size(frame, max_side)
    data = _jpeg(image, size)
    for _ in range(SHRINK_STEPS):
        length = 4 * math.ceil(len(data) / 3) if b64 else len(data)
        if max_bytes is None or length <= max_bytes:
            break
        scale = 0.95 * math.sqrt(max_bytes / length)
        size = (max(1, int(size[0] * scale)), max(1, int(size[1] * scale)))
        data = _jpeg(image, size)
    return data


def _jpeg(image: Image.Image, size: tuple[int, int]) -> bytes:
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
