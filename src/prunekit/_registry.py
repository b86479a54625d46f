"""Name -> object registries (criteria, schedules, surgeons, datasets, models).

A registry rejects a duplicate name at registration and answers an unknown name
with an error that lists the valid ones, so adding an entry is one decorated
function and nothing else.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects of one kind.

    Example:
        >>> criteria = Registry("criterion")
        >>> @criteria.register("magnitude")
        ... def magnitude(weight): return weight.abs()
        >>> criteria.get("magnitude") is magnitude
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds an object under ``name``; a duplicate name is an error."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered; pick another name")
            self._items[name] = obj
            return obj

        return add

    def replace(self, name: str, obj: T) -> None:
        """Swap the object registered as ``name`` (which must exist) for ``obj``."""
        self.get(name)
        self._items[name] = obj

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name lists the valid ones."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names, optionally filtered by a shell-style pattern (``"l*"``)."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
