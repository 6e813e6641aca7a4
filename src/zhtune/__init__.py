"""zhtune: Chinese text classification from raw text to a served model."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """A subpackage's ``__getattr__`` and ``__all__`` that import each name from its module on
    first use (PEP 562), so ``import zhtune.training`` does not load torch."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, list(names)


from zhtune.classifier import Classifier  # noqa: E402

__all__ = ["Classifier", "__version__"]
