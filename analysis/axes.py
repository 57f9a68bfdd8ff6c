"""The sweep's axes: the config keys whose values differ between jobs, read from each job's config.yaml.

Folder names are never parsed: a job's identity is its saved config. A key that only follows another
axis (router.top_k when router.name changes, because each router has its own fields) is not an axis of
its own; it becomes one when it varies for a fixed name (e.g. memory.window_s swept for one memory).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

# the sweep's usual axes, in the order tables show them; any other varying key follows, sorted
PREFERRED = ("run", "dataset.name", "backend.name", "router.name", "memory.name", "scheduler.name")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config; lists become JSON text so that they compare and print as one value."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(node, list | tuple):
        return {prefix[:-1]: json.dumps(list(node))}
    return {prefix[:-1]: node}


def detect(configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The keys whose values differ between jobs (flat configs by job), in display order."""
    keys = sorted({key for config in configs.values() for key in config})
    varying = [key for key in keys if len({_comparable(c.get(key)) for c in configs.values()}) > 1]
    names = {key for key in varying if key.endswith(".name") or key == "run"}
    axes = [key for key in varying if key in names or not _follows_name(key, names, configs)]
    return sorted(axes, key=_order)


def resolve(axis: str, axes: Iterable[str]) -> str:
    """An axis given by group (`router`) or by key (`router.name`, `system.s2.max_frames`)."""
    axes = list(axes)
    for candidate in (axis, f"{axis}.name"):
        if candidate in axes:
            return candidate
    shown = ", ".join(label(a) for a in axes) or "none: every job has the same config"
    raise ValueError(f"{axis!r} is not an axis of this sweep; its axes are {shown}")


def label(axis: str) -> str:
    """How a column of axis values is headed: `router` for router.name, the key otherwise."""
    return axis[: -len(".name")] if axis.endswith(".name") and axis.count(".") == 1 else axis


def value_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _follows_name(key: str, names: set[str], configs: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether `key` is constant for every value of the `.name` axis of a group that contains it."""
    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        name_key = ".".join(parts[:depth]) + ".name"
        if name_key in names:
            seen: dict[Any, Any] = {}
            for config in configs.values():
                group, value = _comparable(config.get(name_key)), _comparable(config.get(key))
                if seen.setdefault(group, value) != value:
                    return False
            return True
    return False


def _order(key: str) -> tuple[int, str]:
    return (PREFERRED.index(key), "") if key in PREFERRED else (len(PREFERRED), key)


def _comparable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
