"""Import optional heavy dependencies inside the functions that need them."""

from __future__ import annotations

import importlib
from types import ModuleType

from perovstem.errors import OptionalDependencyError

__all__ = ["import_optional", "has_module"]


def import_optional(name: str, *, extra: str) -> ModuleType:
    """Import ``name`` or raise an error that names the pip extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise OptionalDependencyError(
            f"`{name}` is needed for this feature: pip install 'perovstem[{extra}]' ({exc})"
        ) from None


def has_module(name: str) -> bool:
    """Return True if ``name`` can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None
