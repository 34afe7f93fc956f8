"""Name -> object registries: every pluggable concept (loss, scheduler, distiller, task...)
is looked up by the name a config gives, so adding one never edits the code that uses it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from brewlab.errors import bad_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of functions or classes, filled by the `register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str, key: str | None = None) -> T:
        """Look `name` up; `key` is the config key shown in the error if it is unknown."""
        try:
            return self._items[name]
        except KeyError:
            raise bad_choice(key or self.kind, name, self._items) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
