"""Anthropic's Message Batches API for `batch: true` (backends/batch.py): one create with every request's params
under its custom id, polled until its processing ends, then the results JSONL read back and matched by custom id.
Same SDK client (retries off) as the backend's direct calls.
"""

from __future__ import annotations

from typing import Any

from backends.anthropic_messages import parse_message, sdk_errors
from backends.api import ProviderError, Reply
from backends.batch import BatchStatus

# an errored request's error type -> the retry class (anything else: a server error, submitted again)
ERROR_KINDS = {
    "invalid_request_error": "client",
    "authentication_error": "client",
    "permission_error": "client",
    "not_found_error": "client",
    "billing_error": "client",
    "rate_limit_error": "rate_limit",
    "gateway_timeout_error": "timeout",
}


class AnthropicBatches:
    """The `BatchTransport` of the anthropic backend."""

    def __init__(self, client: Any, where: str, timeout_s: float) -> None:
        self._client, self._where, self._timeout_s = client, where, timeout_s

    async def submit(self, requests: dict[str, dict[str, Any]]) -> str:
        with sdk_errors(self._where, self._timeout_s):
            batch = await self._client.messages.batches.create(
                requests=[{"custom_id": key, "params": params} for key, params in requests.items()]
            )
        return batch.id

    async def status(self, batch_id: str) -> BatchStatus:
        with sdk_errors(self._where, self._timeout_s):
            batch = await self._client.messages.batches.retrieve(batch_id)
        return BatchStatus(batch.processing_status == "ended", batch.processing_status, batch)

    async def results(self, batch_id: str, status: BatchStatus) -> dict[str, Reply | ProviderError]:
        outcomes: dict[str, Reply | ProviderError] = {}
        with sdk_errors(self._where, self._timeout_s):
            async for item in await self._client.messages.batches.results(batch_id):
                outcomes[item.custom_id] = self._outcome(item.result, batch_id)
        return outcomes

    def _outcome(self, result: Any, batch_id: str) -> Reply | ProviderError:
        kind = getattr(result, "type", None)
        if kind == "succeeded":
            try:
                return parse_message(result.message, self._where)
            except ProviderError as e:
                return e
        if kind == "errored":
            error = getattr(getattr(result, "error", None), "error", None)
            error_type = getattr(error, "type", None) or "api_error"
            detail = getattr(error, "message", None) or "no detail"
            message = f"a request in batch {batch_id} errored ({error_type}) at {self._where}: {detail}"
            return ProviderError(ERROR_KINDS.get(error_type, "server"), None, message)
        # canceled or expired: never processed, so submitted again (as a server error, within its tries)
        return ProviderError("server", None, f"a request in batch {batch_id} was {kind} at {self._where}")
