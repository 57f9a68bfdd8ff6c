"""The Gemini API's batch mode for `batch: true` (backends/batch.py): one `batches.create` with every request
inlined (its custom id in the request's metadata), polled with `batches.get` until the job ends, its inlined
responses matched by that metadata. Same SDK client (retries off) as the backend's direct calls. Frames only: a
`send: video` upload would have to outlive the run, so batch mode refuses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backends.api import ProviderError, Reply, status_kind
from backends.batch import BatchStatus
from backends.google_genai import parse_response
from harness.errors import ConfigError

if TYPE_CHECKING:
    from backends.google_genai import GoogleGenAI

ENDED = frozenset(
    {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
     "JOB_STATE_PARTIALLY_SUCCEEDED"}
)  # fmt: skip
ID_FIELD = "key"  # the request metadata field that carries the custom id


class GoogleBatches:
    """The `BatchTransport` of the google backend."""

    def __init__(self, backend: GoogleGenAI) -> None:
        if backend.cfg.send.value != "frames":
            raise ConfigError(
                "backend.batch=true with backend.send=video: an uploaded video would have to outlive the run; "
                "use backend.send=frames for batch mode"
            )
        self._backend = backend

    async def submit(self, requests: dict[str, dict[str, Any]]) -> str:
        backend = self._backend
        inlined = []
        for key, payload in requests.items():
            contents = [
                {**content, "parts": [await backend._sdk_part(part, []) for part in content["parts"]]}
                for content in payload["contents"]
            ]
            inlined.append({"contents": contents, "config": payload["config"], "metadata": {ID_FIELD: key}})
        job = await backend._call(backend._client.batches.create(model=backend.cfg.model, src=inlined))
        return job.name

    async def status(self, batch_id: str) -> BatchStatus:
        job = await self._backend._call(self._backend._client.batches.get(name=batch_id))
        state = getattr(job.state, "value", job.state) or "JOB_STATE_UNSPECIFIED"
        refused = None
        if state == "JOB_STATE_FAILED":
            detail = getattr(job.error, "message", None) or "no reason given"
            refused = f"batch {batch_id} failed at {self._backend._where}: {detail}"
        return BatchStatus(state in ENDED, state, job, refused)

    async def results(self, batch_id: str, status: BatchStatus) -> dict[str, Reply | ProviderError]:
        where = self._backend._where
        responses = getattr(status.handle.dest, "inlined_responses", None) or []
        outcomes: dict[str, Reply | ProviderError] = {}
        for item in responses:
            key = (item.metadata or {}).get(ID_FIELD)
            if key is None:
                continue  # not one of ours: left without a result, so submitted again
            if item.error is not None or item.response is None:
                code = getattr(item.error, "code", None)
                detail = getattr(item.error, "message", None) or "no response"
                kind = status_kind(int(code)) if code else "server"
                message = f"a request in batch {batch_id} failed (code {code}) at {where}: {detail}"
                outcomes[key] = ProviderError(kind, code, message)
                continue
            try:
                outcomes[key] = parse_response(item.response, where)
            except ProviderError as e:
                outcomes[key] = e
        return outcomes
