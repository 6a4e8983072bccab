"""String-match scoring (RULER's, no judge model) and aggregation per cell with Wilson 95% intervals.

RULER scores the needle tasks, vt and cwe with ``string_match_all``: the fraction of the expected
strings found in the output, case-insensitive (``r.lower() in pred.lower()``). Here an expected
string counts only where it stands alone, not inside a longer word or number (RULER would find
"1234567" in "91234567" and "art" in "start"), the guard ``niah/scoring.py`` uses. A task with one
expected string (niah_single, niah_multikey) thus scores 1 or 0; niah_multivalue, vt and cwe score
k / 4, k / 5 and k / 10.

Aggregation per (task, length, window, setting), and with ``by_placement`` per placement of the
answer needles too: the mean score over samples, and the count of fully correct samples (score 1)
with its Wilson 95% interval. The interval is on that count because Wilson's interval is for k
successes in n independent trials; the fractional scores of one sample are not independent trials
(its four values share one prompt), so the mean is reported beside it without an interval. For the
one-answer tasks the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from niah.scoring import wilson

CELL_KEYS = ("task", "length", "window", "setting")


def matches(output: str, expected: Sequence[str]) -> list[bool]:
    """For each expected string: whether it occurs in ``output``, any case, not inside a longer word or number."""
    return [
        re.search(rf"(?<![0-9A-Za-z]){re.escape(e)}(?![0-9A-Za-z])", output, flags=re.IGNORECASE) is not None
        for e in expected
    ]


def score(output: str, expected: Sequence[str]) -> float:
    """RULER's string_match_all for one sample: the fraction of ``expected`` found in ``output``."""
    if not expected:
        raise ValueError("expected: no answer strings to score against")
    found = matches(output, expected)
    return sum(found) / len(found)


def summarize(records: Iterable[dict[str, Any]], by_placement: bool = False) -> list[dict[str, Any]]:
    """One row per cell, in first-seen order: n, mean score, fully correct count and its Wilson interval."""
    keys = CELL_KEYS + (("placement",) if by_placement else ())
    cells: dict[tuple, list[float]] = {}
    for r in records:
        cells.setdefault(tuple(r[k] for k in keys), []).append(r["score"])
    rows = []
    for cell, scores in cells.items():
        full = sum(1 for s in scores if s == 1.0)
        lo, hi = wilson(full, len(scores))
        rows.append({**dict(zip(keys, cell)), "n": len(scores), "mean_score": round(sum(scores) / len(scores), 4),
                     "all_correct": full, "all_correct_wilson95": [round(lo, 4), round(hi, 4)]})
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as fixed-width text: one line per cell."""
    placement = bool(rows) and "placement" in rows[0]
    head = ["task", "length", "window", "setting"] + (["placement"] if placement else [])
    head += ["n", "mean", "all correct", "Wilson 95%"]
    lines = [head]
    for r in rows:
        lo, hi = r["all_correct_wilson95"]
        cells = [r["task"], str(r["length"]), str(r["window"]), r["setting"]] + ([r["placement"]] if placement else [])
        cells += [str(r["n"]), f"{r['mean_score']:.3f}", f"{r['all_correct']}/{r['n']}", f"[{lo:.3f}, {hi:.3f}]"]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
