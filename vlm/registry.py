"""One small registry helper for every kind of named part: encoders, connectors, routes, families,
objectives, strategies, data formats, benchmarks.

    FAMILIES = Registry("model family")
    FAMILIES.register("llava", llava_family)          # a duplicate name is an error
    @OBJECTIVES.register("next_token")                 # or as a decorator
    class NextToken(Objective): ...
    FAMILIES.get("llava")                              # unknown -> UserError naming the known ones
    FAMILIES.names("ia*")                              # fnmatch filter, sorted

Registration happens when the module that defines a part is imported; the package that owns a
registry imports its part modules once (its `__init__`), so nothing here imports anything.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from vlm.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """`register(name, obj)`, or `@register(name)` over a class or function. Returns obj."""
        def add(o: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = o
            return o
        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UserError(f"unknown {self.kind} '{name}'; known: {', '.join(sorted(self._items)) or 'none'}")
        return self._items[name]

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, sorted; `pattern` is an fnmatch pattern ('ia*', 'timm:*')."""
        return sorted(n for n in self._items if pattern is None or fnmatch.fnmatchcase(n, pattern))

    def items(self, pattern: str | None = None) -> Iterator[tuple[str, T]]:
        return ((n, self._items[n]) for n in self.names(pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


# LLM specs that a higher layer resolves: prefix -> fn(spec, seed) giving another LLM spec (the families'
# resolve_llm asks). vlm.train registers 'pretrained:RECIPE' (the LLM a recipe trains, built once and cached).
LLM_SOURCES: dict[str, Callable] = {}
