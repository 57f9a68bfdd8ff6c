"""Name -> (config schema, implementation) tables, one per swappable part.

The same word is the conf file stem, the registry key and the `name:` field. Registering also
stores the schema in Hydra's ConfigStore under `schema/<kind>/<name>`, so a conf file that pulls
it in (`- /schema/router@_here_: uniform`) is type-checked at compose time, before any work.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import ConfigError

T = TypeVar("T")
K = TypeVar("K")


@dataclass(frozen=True)
class Choice:
    """A parsed conf node: which implementation, with its typed config. Builds nothing."""

    kind: str
    name: str
    config: Any


def plain(config: Any) -> dict[str, Any]:
    """A config dataclass as plain data (enums as their names)."""
    return OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)  # type: ignore[return-value]


def answer_fields(config: Any) -> dict[str, Any]:
    """`plain(config)` without the fields its class lists in `run_only`: how a call is made (endpoint, key
    variable, timeout, retries, rate limits, prices), never what it answers. What a job's hash and an LLM
    judge's cache key cover, so changing them keeps the records and the cached outputs."""
    out = plain(config)
    for name in getattr(type(config), "run_only", ()):
        out.pop(name, None)
    return out


def schema_node(schema: type) -> DictConfig:
    """The typed node of a config dataclass, writable so that YAML and overrides can set it.

    Our config dataclasses are frozen (an implementation must not edit its config), and OmegaConf
    would make their nodes read-only; types and keys are still checked on every merge.
    """
    node = OmegaConf.structured(schema)
    _clear_readonly(node)
    return node


def _clear_readonly(node: DictConfig) -> None:
    OmegaConf.set_readonly(node, None)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _clear_readonly(child)


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[type, Callable[[Any], T]]] = {}

    def register(self, name: str, config: type) -> Callable[[K], K]:
        """Class decorator: `@ROUTERS.register("uniform", UniformConfig)`."""
        if getattr(config, "name", None) != name:
            raise TypeError(f"{config.__name__}.name must default to {name!r}")

        def add(cls: K) -> K:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = (config, cls)  # type: ignore[assignment]
            ConfigStore.instance().store(group=f"schema/{self.kind}", name=name, node=schema_node(config))
            return cls

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def implementation(self, name: str) -> Callable[[Any], T]:
        return self._entries[name][1]

    def parse(self, node: DictConfig | dict[str, Any]) -> Choice:
        """Check one conf node against its schema and return the typed config."""
        params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        name = str(params.get("name", ""))
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}")
        schema, _ = self._entries[name]
        try:
            typed = OmegaConf.to_object(OmegaConf.merge(schema_node(schema), params))
        except OmegaConfBaseException as e:
            raise ConfigError(f"{self.kind}={name} (conf/{self.kind}/{name}.yaml or an override): {e}") from None
        return Choice(self.kind, name, typed)

    def build(self, choice: Choice, *args: Any) -> T:
        return self._entries[choice.name][1](choice.config, *args)
