"""curate: messy image collections in, clean versioned training shards (and a classifier) out.

The Python API (``curate.Workspace``, see ``curate.api``) is imported on first use (PEP 562), so that ``import
curate`` and ``curate --help`` stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Workspace", "__version__"]

if TYPE_CHECKING:
    from curate.api import Workspace


def __getattr__(name: str) -> Any:
    if name == "Workspace":
        from curate.api import Workspace

        return Workspace
    raise AttributeError(f"module 'curate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "Workspace"])
