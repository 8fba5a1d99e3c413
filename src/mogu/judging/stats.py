"""How sure a measured rate is: the Wilson score interval of a binomial proportion."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The (low, high) 95% (``z`` 1.96) Wilson score interval of ``successes / n``; None for n = 0.

    Unlike the normal approximation it stays inside [0, 1] and does not
    collapse to a point at 0 or n successes, which matters for refusal rates
    near 0% or 100% on suites of 50-100 prompts.
    """
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def format_interval(interval: list[float] | tuple[float, float] | None) -> str:
    """`` [74-91]`` (percent), or nothing for outputs written before intervals were recorded."""
    return "" if not interval else f" [{100 * interval[0]:.0f}-{100 * interval[1]:.0f}]"
