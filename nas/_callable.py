"""Packages that are also functions of the Python API: ``nas.search(...)`` and ``nas.train(...)``.

``nas.search`` names both the package of the search code and the API call that runs a search (and
likewise ``nas.train``). Once the package is imported, ``nas.search`` is the module object, so the
module itself must be callable for ``nas.search(budget=...)`` to keep working: ``callable_package``
gives it a class whose ``__call__`` is the ``nas.api`` function of the same name.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def callable_package(module_name: str, api_name: str) -> None:
    """Make the (already imported) module ``module_name`` call ``nas.api.<api_name>``."""

    class _Package(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from nas import api

            return getattr(api, api_name)(*args, **kwargs)

    _Package.__name__ = _Package.__qualname__ = f"CallablePackage[{api_name}]"
    sys.modules[module_name].__class__ = _Package
