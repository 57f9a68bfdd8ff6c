"""Why a query has no usable answer: a small fixed set of causes, read from the record alone.

An error record's text starts with the exception class (`RateLimitError: ...`, as the runner writes
it); the message decides first where it names the cause outright (a `BackendError` that says "CUDA out
of memory" is an out-of-memory failure, whatever class carried it). Records without an error can still
fail: a rule-scored answer the parser could not read (`unparseable`) or an LLM judgment that could not
be read (`judge_error`). Everything not recognised is `other_error`, never dropped.
"""

from __future__ import annotations

import re

OK = "ok"
# the fixed taxonomy, in the order tables list it; the first seven are errors (no answer was recorded)
ERRORS = (
    "api_error",
    "rate_limit",
    "out_of_memory",
    "context_overflow",
    "decode_error",
    "budget_stop",
    "other_error",
)
CAUSES = (*ERRORS, "unparseable", "judge_error")
RULE_SCORED = frozenset({"mcq", "yes_no", "count"})  # kinds whose answer a parser must read

_MESSAGES = (  # (cause, pattern on the whole error text): checked before the class name
    ("out_of_memory", re.compile(r"out of memory|outofmemory|\bMemoryError\b|\bOOM\b", re.IGNORECASE)),
    (
        "context_overflow",
        re.compile(
            r"exceeds the model's context|maximum (context|model) length|max_model_len|context (window|length)"
            r"|prompt is too long|too many (input )?tokens",
            re.IGNORECASE,
        ),
    ),
    ("budget_stop", re.compile(r"budget", re.IGNORECASE)),
)
_CLASSES = {  # exception class name -> cause
    "RateLimitError": "rate_limit",
    "BackendError": "api_error",
    "ServerError": "api_error",
    "ApiTimeoutError": "api_error",
    "ClientError": "api_error",
    "ProviderError": "api_error",
    "TimeoutError": "api_error",
    "ConnectionError": "api_error",
    "DataError": "decode_error",
    "BrokenSegment": "decode_error",
    "InvalidDataError": "decode_error",
    "FFmpegError": "decode_error",
    "FileNotFoundError": "decode_error",
}


def error_cause(error: str) -> str:
    """The cause of one error record's text (`<ExceptionClass>: <message>`)."""
    for cause, pattern in _MESSAGES:
        if pattern.search(error):
            return cause
    head = error.split(":", 1)[0].strip()
    name = head.rsplit(".", 1)[-1]  # a qualified class name counts by its last part
    if name in _CLASSES:
        return _CLASSES[name]
    if "decod" in error.lower():
        return "decode_error"
    return "other_error"


def record_cause(error: str | None, judge_failed: int, kind: str, answered: bool, parsed: bool) -> str:
    """The status of one record: `ok` or one of CAUSES (an error first, then a judge failure, then parsing)."""
    if error is not None:
        return error_cause(error)
    if judge_failed:
        return "judge_error"
    if answered and not parsed and kind in RULE_SCORED:
        return "unparseable"
    return OK
