"""Typed reading of annotation JSON: every error names the file, the item and the field."""

from __future__ import annotations

import json
import math
from typing import Any

from harness.errors import DataError


class Fields:
    """Typed access to one JSON object; errors say where and which field."""

    def __init__(self, item: Any, where: str) -> None:
        if not isinstance(item, dict):
            raise DataError(f"{where}: must be an object, got {show(item)}")
        self.item, self.where = item, where

    def get(self, key: str, kind: type, optional: bool = False) -> Any:
        if key not in self.item or (optional and self.item[key] is None):
            if optional:
                return None
            raise DataError(f"{self.where}: field {key!r} is missing")
        value = self.item[key]
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DataError(f"{self.where}: field {key!r} must be a number, got {show(value)}")
            return float(value)
        if not isinstance(value, kind):
            raise DataError(f"{self.where}: field {key!r} must be {kind.__name__}, got {show(value)}")
        return value

    def fail(self, key: str, problem: str) -> DataError:
        return DataError(f"{self.where}: field {key!r} {problem}")


def show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
