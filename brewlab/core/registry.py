"""Name -> object registries: every pluggable concept (loss, scheduler, distiller, task...)
is looked up by the name a config gives, so adding one never edits the code that uses it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from brewlab.core.errors import bad_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of functions or classes, filled by the `register` decorator.

    An entry may carry properties declared with it (`register(name, props)`), so code that uses
    the entry asks the registry what it needs instead of keeping its own list of names.
    """

    def __init__(self, kind: str, default_props: Any = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._props: dict[str, Any] = {}
        self._default_props = default_props

    def register(self, name: str, props: Any = None) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self._props[name] = self._default_props if props is None else props
            return obj

        return add

    def props(self, name: str, key: str | None = None) -> Any:
        """The properties `name` was registered with (the registry's default if none)."""
        self.get(name, key)
        return self._props[name]

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
