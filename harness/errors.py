"""The failures a user can act on; each message says where, what, and what to do.

API backends raise a typed BackendError once their retry policy gives up, so a record's error string starts
with the cause (RateLimitError, ServerError, ApiTimeoutError, ClientError) and tables can count by cause.
"""

import signal


class ConfigError(ValueError):
    """A config node is wrong: names the group/option or key and the allowed values."""


class DataError(ValueError):
    """A benchmark file is missing or malformed: names the file, the item and the field."""


class BackendError(RuntimeError):
    """A backend could not answer; becomes an error record, never a crash of the sweep."""


class RateLimitError(BackendError):
    """The provider kept answering 429 (rate limited) until the retry policy gave up."""


class ServerError(BackendError):
    """The provider failed (5xx, dropped connection, malformed reply) until the retry policy gave up."""


class ApiTimeoutError(BackendError):
    """No answer within the configured timeout, on every try."""


class ClientError(BackendError):
    """The request itself was refused (400, 401, 403, 404, too many or too large images): never retried."""


class ShardBusy(RuntimeError):
    """Another live process holds the lock of a shard this job would write: names the shard, who holds it
    since when, and what to do (harness/runner/lock.py)."""


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the job cleanly (harness/runner/interrupt.py): records on disk are kept, no
    shard was marked done, and rerunning the same command resumes. The exit status is 128 + the signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(
            f"{signal.Signals(signum).name} received: the job stopped; its records are kept and rerunning the "
            "same command resumes it"
        )

    def __reduce__(self) -> tuple[type, tuple[int]]:  # pickled back from launcher workers
        return Interrupted, (self.signum,)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
