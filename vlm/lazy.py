"""Package attributes that import their module on first use (PEP 562 module `__getattr__`), so importing
a package stays cheap (the CLI answers `--help` without torch).

    _LAZY = {"load": ("vlm.loading", "load")}          # name -> (module, attribute)
    __getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, table: dict[str, tuple[str, str]],
                    namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package`: names in `table` resolve by importing their module."""
    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module '{package}' has no attribute {name!r}")
        module, attr = table[name]
        return getattr(importlib.import_module(module), attr)

    def __dir__() -> list[str]:
        return sorted(list(namespace) + list(table))

    return __getattr__, __dir__
