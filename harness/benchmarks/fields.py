"""Typed reading of annotation JSON and official source files: every error names the file, the item and the field."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, DataError


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


def read_json(path: Path, missing: str) -> Any:
    """The parsed JSON of an annotation file; `missing` says what the file is and where it comes from."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None


def parse_official_source(path: Path, repository: str) -> ast.Module:
    """A file of the user's checkout of an official repository, parsed as Python source and never run."""
    try:
        return ast.parse(Path(path).read_text(), filename=str(path))
    except FileNotFoundError:
        raise ConfigError(
            f"dataset.prompts.official_dir: no {path}; point official_dir at your checkout of {repository}, or "
            "leave it empty for our own wording"
        ) from None
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"dataset.prompts.official_dir: cannot read {path} as Python source: {e}") from None
