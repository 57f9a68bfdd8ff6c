"""Content hashes of files, for keys that must change when the bytes do (videos, weights, checkpoints)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20
_hashes: dict[tuple[str, int, int], str] = {}


def content_hash(path: str | Path) -> str:
    """sha256 of the file's bytes, remembered per (path, size, mtime) for the process."""
    stat = os.stat(path)
    memo = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        _hashes[memo] = digest.hexdigest()
    return _hashes[memo]
