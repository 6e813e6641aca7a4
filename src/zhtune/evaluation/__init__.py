"""Metrics, calibration, robustness, comparison and reports.

Public entry points (imported lazily, so ``zhtune.evaluation.metrics`` stays light):
``evaluate_model``, ``EvaluateConfig``, ``compare_runs``, ``CompareConfig``,
``build_report``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "evaluate_model": "zhtune.evaluation.evaluate",
    "EvaluateConfig": "zhtune.evaluation.evaluate",
    "compare_runs": "zhtune.evaluation.compare",
    "CompareConfig": "zhtune.evaluation.compare",
    "build_report": "zhtune.evaluation.report",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zhtune.evaluation' has no attribute {name!r}")
