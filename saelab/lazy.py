"""Package exports resolved on first use, so `import saelab.cli` loads no torch (a fast --help)."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class LazyPackage(types.ModuleType):
    """A package whose exports are imported when first read (PEP 562 and the module `__class__`
    hook), and never shadowed by a submodule of the same name (saelab.train the function vs
    saelab/train/, saelab.analysis.logit_lens), which the import system would otherwise bind."""

    _lazy_exports: dict[str, str]

    def __getattr__(self, name: str) -> Any:
        exports = self.__dict__.get("_lazy_exports", {})
        if name not in exports:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        submodule = (
            isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"
        )
        if submodule and name in self._lazy_exports:
            return  # importing that submodule: the export keeps the name
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*self.__dict__, *self._lazy_exports})


def lazy_package(name: str, exports: dict[str, str]) -> None:
    """Make package `name` (call it from the package's __init__) a LazyPackage of `exports`,
    {exported name: the module that defines it}."""
    package = sys.modules[name]
    package._lazy_exports = exports
    package.__class__ = LazyPackage
