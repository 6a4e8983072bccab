"""Window eviction policy (pure, no SGLang): which KV positions a windowed layer keeps.

A windowed layer (sliding, no FA decode) reads, for every later query ``i``, the sinks
``[0, k)`` and its window ``(i - W, i]``; everything else may be freed. Positions follow the
visibility rule of :func:`swaa_sglang.reference.visibility_mask`. The SGLang cache that applies
this policy is :mod:`attention_backends.radix_cache`; the design is in docs/design/eviction.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from swaa_sglang.config import SWAAConfig

Range = tuple[int, int]  # half-open [lo, hi)


# -- policy (pure) ----------------------------------------------------------------
def sglang_window(window: int) -> int:
    """:attr:`SWAAConfig.sglang_window` (W - 1) of a window-eviction config with window W.

    For the pure functions here, which take W alone; W < 2 is refused as window eviction
    refuses it (ValueError naming ``evict_window`` and ``sliding_window_size``).
    """
    return SWAAConfig(sliding_window_size=window, evict_window=True).sglang_window


def sink_floor(keep_first: int, page_size: int = 1) -> int:
    """``K``: the sink region rounded up to whole pages (what the pool must never evict)."""
    if keep_first <= 0:
        return 0
    return -(-keep_first // page_size) * page_size


def _merge(ranges: Iterable[Range]) -> list[Range]:
    out: list[Range] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def needed_ranges(kv_len: int, next_query: int, window: int, keep_first: int) -> list[Range]:
    """Positions of ``[0, kv_len)`` that a windowed layer still reads.

    ``next_query`` is the smallest position of any query still to run on this request
    (``kv_len`` in plain decode: the token being decoded; earlier with chunked prefill
    planned ahead or an in-flight batch). Every later query ``i >= next_query`` reads the
    sinks ``[0, min(k, i + 1))`` and its window ``(i - W, i]``; their union over the
    positions already computed is ``[0, min(k, kv_len)) | [max(0, next_query - W + 1), kv_len)``.
    """
    if not 0 <= next_query <= kv_len:
        raise ValueError(f"next_query {next_query} outside [0, {kv_len}]")
    sinks = (0, min(keep_first, kv_len))
    win = (max(0, next_query - window + 1), kv_len)
    return _merge([sinks, win])


def freeable_ranges(kv_len: int, next_query: int, window: int, keep_first: int) -> list[Range]:
    """Complement of :func:`needed_ranges` in ``[0, kv_len)``: at most one range, ``[k, window start)``."""
    out, pos = [], 0
    for lo, hi in needed_ranges(kv_len, next_query, window, keep_first):
        if lo > pos:
            out.append((pos, lo))
        pos = hi
    if pos < kv_len:
        out.append((pos, kv_len))
    return out


def needed_for_prefix(prefix_len: int, window: int, keep_first: int) -> list[Range]:
    """KV of a reused prefix ``[0, p)`` that the request's new tokens (positions >= p) read."""
    return needed_ranges(prefix_len, prefix_len, window, keep_first)


def usable_prefix_len(
    present: Sequence[bool], boundaries: Sequence[int], window: int, keep_first: int
) -> int:
    """The cut-back rule: the longest reusable prefix of a cached match.

    ``present[j]`` says whether the windowed-layer KV of position ``j`` of the matched
    prefix still exists; ``boundaries`` are the lengths a match may be cut to (node
    boundaries of the radix tree; 0 is always allowed). Returns the largest boundary
    ``p <= len(present)`` whose :func:`needed_for_prefix` positions are all present.
    """
    n = len(present)
    missing_prefix = [0] * (n + 1)  # missing_prefix[j] = number of absent positions in [0, j)
    for j, ok in enumerate(present):
        missing_prefix[j + 1] = missing_prefix[j] + (0 if ok else 1)
    best = 0
    for p in boundaries:
        if not 0 < p <= n or p <= best:
            continue
        if all(missing_prefix[hi] == missing_prefix[lo] for lo, hi in needed_for_prefix(p, window, keep_first)):
            best = p
    return best


def sglang_evicted_frontier(
    prev_frontier: int, pre_len: int, window: int, page_size: int, protected_len: int, floor: int,
    chunk_cache: bool = False,
) -> int:
    """Where SGLang 0.5.17's ``free_swa_out_of_window_slots`` leaves ``swa_evicted_seqlen``.

    A transcription of that function (``sglang/srt/mem_cache/common.py``) for documentation
    and tests, taking SWAA's W; it frees ``[prev, new)`` where ``prev = max(prev_frontier, floor')``.
    """
    w = sglang_window(window)  # SGLang's W - 1
    evict_floor = max(protected_len, floor)
    if page_size > 1 and evict_floor > protected_len:
        evict_floor = -(-evict_floor // page_size) * page_size
    prev = max(prev_frontier, evict_floor)
    threshold = pre_len - w if chunk_cache else pre_len - max(w, page_size)
    new = max(prev, threshold)
    if page_size > 1:
        new = (new // page_size) * page_size
    return max(new, prev)
