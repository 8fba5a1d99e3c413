"""Evaluation: suites, attacks, defenses, the runner and the report (judges live in ``mogu.judging``).

``from mogu.eval import evaluate`` is the Python API that ``mogu eval`` wraps;
it is imported lazily so that importing ``mogu.eval.suites`` does not load the runner's dependencies.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from mogu.eval.runner import evaluate

        return evaluate
    raise AttributeError(f"module 'mogu.eval' has no attribute {name!r}")
