"""Name -> factory registries (models, datasets, structures, methods) with aliases and help text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import unknown_name


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    help: str = ""
    aliases: tuple[str, ...] = field(default=())


class Registry:
    """A lookup table whose misses fail with the list of choices and a "did you mean"."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str, obj: Any = None, *, help: str = "", aliases: tuple[str, ...] = ()
    ) -> Callable[[Any], Any] | Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""

        def add(o: Any) -> Any:
            if name in self._entries or name in self._aliases:
                raise KeyError(f"{self.kind} '{name}' registered twice")
            doc = help or ((o.__doc__ or "").strip().splitlines() or [""])[0]
            self._entries[name] = Entry(name, o, doc, tuple(aliases))
            for a in aliases:
                self._aliases[a] = name
            return o

        return add if obj is None else add(obj)

    def canonical(self, name: str) -> str:
        key = str(name).strip().lower()
        if key in self._entries:
            return key
        if key in self._aliases:
            return self._aliases[key]
        raise unknown_name(self.kind, name, list(self._entries) + list(self._aliases))

    def get(self, name: str) -> Any:
        return self._entries[self.canonical(name)].obj

    def entry(self, name: str) -> Entry:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        key = str(name).strip().lower()
        return key in self._entries or key in self._aliases
