"""Lazy re-exports for the component packages.

``django_qtasks.storage.DjangoStorage`` (and the other defaults of the component
settings) names a class through its package. Importing the class when the package is
imported would make importing any module of a package import its whole component (the
storage imports the broker's channel name, the broker the storage, the worker both); a
module ``__getattr__`` imports it on first use instead.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that looks a missing name up in its
    submodule ``module`` (the component's main module, the old flat module of that
    name), importing it on first use."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            return getattr(import_module(f"{package}.{module}"), name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
