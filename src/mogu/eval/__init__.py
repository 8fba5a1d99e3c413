"""Evaluation: suites, attacks, defenses, judges, the runner and the report.

``from mogu.eval import evaluate`` is the Python API that ``mogu eval`` wraps;
it is imported lazily so that ``mogu.eval.judges`` stays light to import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from mogu.eval.runner import evaluate

        return evaluate
    raise AttributeError(f"module 'mogu.eval' has no attribute {name!r}")
