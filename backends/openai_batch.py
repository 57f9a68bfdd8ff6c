"""OpenAI's Batch API for `batch: true` (backends/batch.py): a JSONL file of chat-completion requests is
uploaded (`purpose="batch"`), a batch is created on it with a 24 h window, polled, and its output and error
files are read back and matched by custom id. Same SDK client (retries off) as the backend's direct calls.
"""

from __future__ import annotations

import json
from typing import Any

from backends.api import ProviderError, Reply, status_kind
from backends.batch import BatchStatus
from backends.openai_chat import parse_completion, sdk_errors

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"  # the only window the Batch API offers
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


class OpenAIBatches:
    """The `BatchTransport` of the openai backend."""

    def __init__(self, client: Any, where: str, timeout_s: float, model: str) -> None:
        self._client, self._where, self._timeout_s, self._model = client, where, timeout_s, model

    async def submit(self, requests: dict[str, dict[str, Any]]) -> str:
        lines = [
            json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}, separators=(",", ":"))
            for key, body in requests.items()
        ]
        with sdk_errors(self._where, self._timeout_s):
            upload = await self._client.files.create(
                file=("requests.jsonl", "\n".join(lines).encode(), "application/jsonl"), purpose="batch"
            )
            batch = await self._client.batches.create(
                input_file_id=upload.id, endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW
            )
        return batch.id

    async def status(self, batch_id: str) -> BatchStatus:
        with sdk_errors(self._where, self._timeout_s):
            batch = await self._client.batches.retrieve(batch_id)
        refused = None
        if batch.status == "failed":  # the input file was refused as a whole
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            refused = "; ".join(f"{e.code}: {e.message}" for e in errors) or "the batch failed without a reason"
            refused = f"batch {batch_id} failed at {self._where}: {refused}"
        return BatchStatus(batch.status in ENDED, batch.status, batch, refused)

    async def results(self, batch_id: str, status: BatchStatus) -> dict[str, Reply | ProviderError]:
        outcomes: dict[str, Reply | ProviderError] = {}
        for file_id in (status.handle.output_file_id, status.handle.error_file_id):
            if not file_id:
                continue
            with sdk_errors(self._where, self._timeout_s):
                content = await self._client.files.content(file_id)
            for line in content.text.splitlines():
                if line.strip():
                    item = _line(line, file_id, self._where)
                    outcomes[item["custom_id"]] = self._outcome(item)
        return outcomes

    def _outcome(self, item: dict[str, Any]) -> Reply | ProviderError:
        """One line of an output or error file: its chat completion, or its failure."""
        from openai.types.chat import ChatCompletion

        response = item.get("response") or {}
        status, body, error = response.get("status_code"), response.get("body") or {}, item.get("error")
        if error is None and status == 200:
            try:
                return parse_completion(ChatCompletion.construct(**body), self._where, self._model)
            except ProviderError as e:
                return e
        detail = (error or {}).get("message") or (body.get("error") or {}).get("message") or "no detail"
        code = (error or {}).get("code") or (body.get("error") or {}).get("type")
        kind = status_kind(status) if isinstance(status, int) and status != 200 else "server"  # e.g. batch_expired
        head = f"HTTP {status}" if status else "no response"
        message = f"a request in a batch failed ({head}{f', {code}' if code else ''}) at {self._where}: {detail}"
        return ProviderError(kind, status, message)


def _line(line: str, file_id: str, where: str) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise ProviderError("server", 200, f"malformed line in batch file {file_id} from {where}: {e}") from None
    if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
        raise ProviderError("server", 200, f"a line without custom_id in batch file {file_id} from {where}")
    return item
