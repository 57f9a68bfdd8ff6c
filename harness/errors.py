"""The three failure families a user can act on; each message says where, what, and what to do."""


class ConfigError(ValueError):
    """A config node is wrong: names the group/option or key and the allowed values."""


class DataError(ValueError):
    """A benchmark file is missing or malformed: names the file, the item and the field."""


class BackendError(RuntimeError):
    """A backend could not answer; becomes an error record, never a crash of the sweep."""
