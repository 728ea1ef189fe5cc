"""One registry mechanism for everything that plugs in: techniques, scenarios,
backends, stores, launchers (in the spirit of lm-eval's `Registry`).

Registering is metadata only. An entry is either the object itself (for specs
whose module is light to import: a dataclass schema and functions that import
their libraries when called) or a lazy `"module:attribute"` reference that is
imported the first time `get` asks for it — so `effbench --help`, `list` or the
leaderboard never import torch or a quantization backend they do not use.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """A name no entry has; the message lists the valid ones and the nearest."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    target: Any  # the object, or "module:attribute" to import on first use
    meta: dict[str, Any] = field(default_factory=dict)  # what listing needs without importing: help text, axis …

    @property
    def lazy(self) -> bool:
        return isinstance(self.target, str)


class Registry(Generic[T]):
    def __init__(self, kind: str, schema_group: str | None = None) -> None:
        self.kind = kind  # "technique method", "scenario" …: used in messages
        # Hydra ConfigStore group where an entry's config schema goes (its YAMLs pull it from there)
        self.schema_group = schema_group
        self._entries: dict[str, Entry[T]] = {}
        self._loaded: dict[str, T] = {}

    def register(self, name: str, target: T | str, *, schema: type | None = None, **meta: Any) -> T | str:
        """Add an entry; `schema` (a dataclass) is stored for Hydra as `<schema_group>/<name>`."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = Entry(name, target, meta)
        if schema is not None:
            from hydra.core.config_store import ConfigStore

            ConfigStore.instance().store(group=self.schema_group, name=name, node=schema)
        return target

    def get(self, name: str) -> T:
        if name in self._loaded:
            return self._loaded[name]
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownName(self.unknown_message(name))
        obj = entry.target
        if entry.lazy:
            module, _, attr = entry.target.partition(":")
            obj = getattr(importlib.import_module(module), attr)
        self._loaded[name] = obj
        return obj

    def unknown_message(self, name: str) -> str:
        near = difflib.get_close_matches(name, list(self._entries), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        return f"unknown {self.kind} {name!r}{hint}; choose one of {', '.join(self.names())}"

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise UnknownName(self.unknown_message(name))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())
