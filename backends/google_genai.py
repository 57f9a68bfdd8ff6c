"""Google's Gemini API through the official `google-genai` SDK: frames as inline images, or the visible clip
uploaded as one video (`send: frames | video`).

Translates `Request -> generate_content arguments` and the SDK's failures into ProviderError kinds; the key
check, response cache, rate limits, retries and cost are the shared `ApiBackend` (backends/api.py). The SDK's
own retries are off (HttpRetryOptions(attempts=1)); its resumable upload still re-sends a chunk whose answer
lacks an upload status (up to 3 times, 1-4 s apart), which the SDK does not let a caller turn off.
With `send: video` the request's frames are encoded into an mp4 at their stream times (the video starts at
the first frame's time, which a text part gives), uploaded with the Files API, waited for until ACTIVE,
referenced as a fileData part sampled at the frames' own rate, and deleted after the answer.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from omegaconf import MISSING
from PIL import Image

from backends.anthropic_messages import CHARS_PER_TOKEN, EMPTY_ANSWER, fit_jpeg, shrunk_size
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
from harness.records import Frame, Request

if TYPE_CHECKING:
    from backends.google_batch import GoogleBatches

log = logging.getLogger(__name__)

GEMINI_API_URL = "https://generativelanguage.googleapis.com/"
IMAGE_TOKENS = 258  # Google's published count for an image up to 384 px a side (larger ones tile): an estimate
VIDEO_FRAME_TOKENS = 263  # per sampled video frame (Google's 263 tokens per second at 1 fps): an estimate
MAX_VIDEO_FPS = 24.0  # the highest sampling rate videoMetadata.fps accepts
VIDEO_CRF = "18"  # x264 quality: visually lossless for frames this size
MS = Fraction(1, 1000)  # the video's time base: frame times kept to the millisecond
FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
REFUSED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}


class Send(str, Enum):
    frames = "frames"  # one inline JPEG part per frame, each after a "[12.0 s]" text part
    video = "video"  # the frames as one mp4, uploaded with the Files API


class ThinkingLevel(str, Enum):
    minimal = "minimal"
    low = "low"
    medium = "medium"
    high = "high"


@dataclass(frozen=True)
class GoogleConfig(ApiConfig):
    name: str = "google"
    model: str = MISSING  # e.g. "gemini-3.8-flash"
    api_key_env: str = "GEMINI_API_KEY"
    api_version: str = "v1"  # the SDK's own default in 3.4.0; GOOGLE_GENAI_API_VERSION is not read
    send: Send = Send.frames
    image_max_side: int = 768  # frames (and video) shrunk so the longer side is at most this
    thinking_level: ThinkingLevel | None = None  # None: the model's default
    # thinking counts against max_output_tokens: this many tokens are added to the request's max_new_tokens, so
    # that a model that thinks first still has room for a short answer
    thinking_tokens: int = 0
    file_poll_s: float = 1.0  # video: how often an uploaded file's state is read until ACTIVE (within timeout_s)
    capabilities: CapabilitiesConfig = field(
        default_factory=lambda: CapabilitiesConfig(max_images=3000, max_image_side=3072, max_image_bytes=7_340_032)
    )

    run_only: ClassVar[frozenset[str]] = ApiConfig.run_only | {"file_poll_s"}


@BACKENDS.register("google", GoogleConfig)
class GoogleGenAI(ApiBackend):
    """One generate_content per request: system instruction, earlier turns, then text memory, the frames (timed
    inline images, or one video) and the prompt."""

    provider = "google"
    cfg: GoogleConfig

    def __init__(self, cfg: GoogleConfig) -> None:
        from google import genai
        from google.genai import types

        super().__init__(cfg)
        options = types.HttpOptions(
            base_url=cfg.base_url or GEMINI_API_URL,  # always set: GOOGLE_GEMINI_BASE_URL is not read
            api_version=cfg.api_version,
            timeout=math.ceil(cfg.timeout_s * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),  # also stops the SDK's implicit connection retries
        )
        self._client = genai.Client(vertexai=False, api_key=self._key, http_options=options).aio

    def payload(self, request: Request) -> dict[str, Any]:
        """{"model", "contents", "config"} as generate_content takes them, JSON-able: inline images as base64
        text, and with send=video one {"file_upload": {mime_type, data, video_metadata}} part that `send`
        replaces by the uploaded file."""
        contents: list[dict[str, Any]] = []
        for turn in request.history:
            contents.append({"role": "user", "parts": [{"text": turn.question}]})
            contents.append({"role": "model", "parts": [{"text": turn.answer or EMPTY_ANSWER}]})
        contents.append({"role": "user", "parts": self._user_parts(request)})
        config: dict[str, Any] = {"max_output_tokens": request.max_new_tokens + self.cfg.thinking_tokens}
        if request.system:
            config["system_instruction"] = request.system
        if self.cfg.capabilities.temperature:
            config["temperature"] = self.cfg.temperature
        if self.cfg.thinking_level is not None:
            config["thinking_config"] = {"thinking_level": self.cfg.thinking_level.value.upper()}
        return {"model": self.cfg.model, "contents": contents, "config": config}

    async def send(self, payload: dict[str, Any]) -> Reply:
        uploaded: list[str] = []
        try:
            contents = [
                {**content, "parts": [await self._sdk_part(part, uploaded) for part in content["parts"]]}
                for content in payload["contents"]
            ]
            response = await self._call(
                self._client.models.generate_content(
                    model=payload["model"], contents=contents, config=payload["config"]
                )
            )
        finally:
            for name in uploaded:
                await self._delete(name)
        return parse_response(response, self._where)

    def batch_transport(self) -> GoogleBatches:
        from backends.google_batch import GoogleBatches

        return GoogleBatches(self)

    def estimate_tokens(self, request: Request) -> int:
        """Text at CHARS_PER_TOKEN, IMAGE_TOKENS per inline frame or VIDEO_FRAME_TOKENS per video frame."""
        texts = request_texts(request)
        if self.cfg.send == Send.frames:
            texts += [f"[{f.time_s:.1f} s]" for f in request.frames]
            media = IMAGE_TOKENS * len(request.frames)
        else:
            media = VIDEO_FRAME_TOKENS * len(request.frames)
        return sum(math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts if t) + media

    async def aclose(self) -> None:
        await super().aclose()
        await self._client.aclose()

    @property
    def _where(self) -> str:
        return self.cfg.base_url or "the Gemini API"

    def _user_parts(self, request: Request) -> list[dict[str, Any]]:
        """Text memory, then the frames (each after its stream time, or one video after its span), then the
        prompt."""
        parts: list[dict[str, Any]] = []
        if request.context:
            parts.append({"text": "\n".join(request.context)})
        frames = sorted(request.frames, key=lambda f: f.time_s)
        side = image_side(self.cfg, self.cfg.image_max_side)
        if self.cfg.send == Send.video and frames:
            parts.append({"text": f"[{frames[0].time_s:.1f} s to {frames[-1].time_s:.1f} s]"})
            video = {"mime_type": "video/mp4", "data": base64.b64encode(encode_clip(frames, side)).decode("ascii")}
            parts.append({"file_upload": {**video, "video_metadata": {"fps": clip_fps(frames)}}})
        elif self.cfg.send == Send.frames:
            for frame in frames:
                data = fit_jpeg(frame, side, self.cfg.capabilities.max_image_bytes)
                self.check_image_bytes(len(data), frame)
                image = {"mime_type": "image/jpeg", "data": base64.b64encode(data).decode("ascii")}
                parts += [{"text": f"[{frame.time_s:.1f} s]"}, {"inline_data": image}]
        parts.append({"text": request.prompt})
        return parts

    async def _sdk_part(self, part: dict[str, Any], uploaded: list[str]) -> dict[str, Any]:
        """A payload part as the SDK takes it: image bytes decoded, a video uploaded and referenced."""
        if "inline_data" in part:
            inline = part["inline_data"]
            return {"inline_data": {"mime_type": inline["mime_type"], "data": base64.b64decode(inline["data"])}}
        if "file_upload" in part:
            upload = part["file_upload"]
            uri = await self._upload(base64.b64decode(upload["data"]), upload["mime_type"], uploaded)
            return {
                "file_data": {"file_uri": uri, "mime_type": upload["mime_type"]},
                "video_metadata": upload["video_metadata"],
            }
        return part

    async def _upload(self, data: bytes, mime_type: str, uploaded: list[str]) -> str:
        """Upload with the Files API and wait, within timeout_s, until the file is ACTIVE; its URI."""
        from google.genai import types

        file = await self._call(
            self._client.files.upload(file=io.BytesIO(data), config=types.UploadFileConfig(mime_type=mime_type))
        )
        uploaded.append(file.name)
        deadline = time.monotonic() + self.cfg.timeout_s
        for _ in range(math.ceil(self.cfg.timeout_s / self.cfg.file_poll_s) + 1):  # bounded by the deadline too
            state = getattr(file.state, "value", file.state)
            if state == "ACTIVE":
                return file.uri
            if state == "FAILED":
                detail = getattr(file.error, "message", None) or "no detail"
                raise ProviderError(
                    "client", None, f"{self._where} could not process the uploaded video {file.name}: {detail}"
                )
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(self.cfg.file_poll_s)
            file = await self._call(self._client.files.get(name=file.name))
        raise ProviderError(
            "timeout", None, f"the uploaded video {file.name} was not ACTIVE within {self.cfg.timeout_s:g} s"
        )

    async def _delete(self, name: str) -> None:
        """Uploaded files expire after 48 h; deleting keeps the project's storage quota free."""
        try:
            await self._call(self._client.files.delete(name=name))
        except ProviderError as e:
            log.warning("google backend: could not delete the uploaded video %s: %s", name, self._scrub(e.message))

    async def _call(self, call: Any) -> Any:
        """Await one SDK call, its failures as ProviderError."""
        from google.genai import errors

        timeouts, transport = _transport_errors()
        try:
            return await call
        except errors.APIError as e:
            status = int(e.code) if e.code else 500
            head = f"{type(e).__name__} (HTTP {status}{f', {e.status}' if e.status else ''})"
            headers = getattr(getattr(e, "response", None), "headers", None)
            kind = status_kind(status)
            raise ProviderError(
                kind, status, f"{head} from {self._where}: {e.message}", retry_after_s(headers)
            ) from None
        except timeouts:
            raise ProviderError(
                "timeout", None, f"no reply from {self._where} within {self.cfg.timeout_s:g} s"
            ) from None
        except transport as e:
            raise ProviderError("server", None, f"{type(e).__name__} to {self._where}: {e}") from None
        except (json.JSONDecodeError, KeyError, ValueError) as e:  # a body that is not JSON, an upload without its URL
            raise ProviderError("server", 200, f"malformed reply from {self._where}: {type(e).__name__}: {e}") from None


def parse_response(response: Any, where: str) -> Reply:
    """The first candidate's text parts (thoughts left out), usage with visual tokens, the finish reason."""
    usage = getattr(response, "usage_metadata", None)
    if usage is None:
        raise ProviderError("server", 200, f"malformed reply from {where}: no usageMetadata")
    details = usage.prompt_tokens_details or []
    visual = sum(d.token_count or 0 for d in details if getattr(d.modality, "value", None) in ("IMAGE", "VIDEO"))
    tokens_in = usage.prompt_token_count or 0
    tokens_out = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)  # thoughts billed as output
    candidates = response.candidates or []
    if not candidates:  # the prompt itself was blocked
        return Reply("", tokens_in, tokens_out, "content_filter", visual)
    candidate = candidates[0]
    parts = (candidate.content.parts if candidate.content is not None else None) or []
    text = "".join(part.text for part in parts if part.text and not part.thought)
    reason = getattr(candidate.finish_reason, "value", None) or "unknown"
    finish = FINISH.get(reason) or ("content_filter" if reason in REFUSED else reason.lower())
    return Reply(text, tokens_in, tokens_out, finish, visual)


def clip_fps(frames: list[Frame]) -> float:
    """The frames' mean rate, so the model samples the video at the frames it was given (1 for one frame)."""
    span = frames[-1].time_s - frames[0].time_s
    if len(frames) < 2 or span <= 0:
        return 1.0
    return round(min(MAX_VIDEO_FPS, (len(frames) - 1) / span), 3)


def encode_clip(frames: list[Frame], max_side: int) -> bytes:
    """An H.264 mp4 of the frames, each shown from its stream time (less the first frame's), shrunk to max_side.

    One thread and fixed settings: the same frames always give the same bytes, which the response cache hashes.
    """
    import av

    width, height = shrunk_size(frames[0], max_side)
    width, height = max(2, width - width % 2), max(2, height - height % 2)  # yuv420p needs even sides
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1 / MS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = stream.codec_context.time_base = MS
        stream.thread_count = 1
        stream.options = {"crf": VIDEO_CRF, "preset": "veryfast"}
        last = -1
        for frame in frames:
            image = Image.fromarray(np.ascontiguousarray(frame.pixels)).resize(
                (width, height), Image.Resampling.BICUBIC
            )
            video_frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            last = video_frame.pts = max(last + 1, round((frame.time_s - frames[0].time_s) / MS))
            video_frame.time_base = MS
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(timeout, other transport) exception classes of the HTTP client the SDK uses (httpx2 or httpx)."""
    timeouts: list[type[BaseException]] = []
    transport: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transport.append(module.TransportError)
    return tuple(timeouts), tuple(transport)
