"""Scoring: whether an answer holds the needle's number, accuracy per cell, and its confidence interval."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any


def score(answer: str, value: str) -> bool:
    """Correct iff the 7-digit number appears in the answer as a whole number (not inside a longer one)."""
    return re.search(rf"(?<!\d){re.escape(value)}(?!\d)", answer) is not None


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (context length, window, setting, position): k correct of n."""
    cells: dict[tuple, list[bool]] = {}
    for r in records:
        cells.setdefault((r["context_length"], r["window"], r["setting"], r["position"]), []).append(r["correct"])
    return [
        {
            "context_length": c,
            "window": w,
            "setting": s,
            "position": p,
            "correct": sum(v),
            "n": len(v),
            "accuracy": sum(v) / len(v),
        }
        for (c, w, s, p), v in cells.items()
    ]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamped so that the interval always holds p (rounding can put centre + half a hair below 1).
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))
