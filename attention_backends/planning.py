"""Batch planning for SWAA on FlashInfer: which KV positions each query reads.

Pure tensor code (CPU or GPU), no FlashInfer and no SGLang: the CPU suite checks
every plan here against ``swaa_sglang.reference.visibility_mask`` by brute force.

A plan is a list of *segments* in FlashInfer's page-size-1 layout: segment s owns
query rows ``qo_indptr[s]:qo_indptr[s+1]`` (rows of the batch's packed queries)
and keys ``kv_pos[kv_indptr[s]:kv_indptr[s+1]]`` (absolute positions within the
request ``kv_req`` of those keys). The backend turns (request, position) into KV
pool slots with one gather through ``req_to_token``.

A sliding layer is computed as a window pass and up to two extra passes, merged by
log-sum-exp:

* the **window pass** (one segment per request, ``causal=True``,
  ``window_left = W - 1``): every query sees ``i - W < j <= i``;
* the **extra pass** (``causal=False``): keys visible by the rule but outside the
  window, all with ``j <= i - W``, so no key is counted twice. For a prompt row
  these are the sinks ``j < min(k, i - W + 1)``. Rows with the same extra key set
  share a segment: the rows that see all k sinks form one segment and need no
  mask at all; only the at most k - 1 rows that see part of the sinks get a
  segment each. Rows with no extra key still belong to a segment (FlashInfer
  tiles the rows contiguously), read one dummy key, and are left out of the
  merge by ``merge_mask``.

A row at a position at or past its request's prompt length is a *generated* row,
whatever kind of batch computes it (a decode row folded into a mixed batch, a
retracted request prefilled again over prompt + output). On a layer with FA
decode it sees everything before its window, ``j <= i - W``: a request's single
generated row takes one segment of the extra pass; a run of two or more takes
the **generated pass** (``causal=True``, on the gathered rows of those runs: one
segment per request whose causal alignment gives each row exactly its keys).

Decode on a sliding layer without FA decode is one pass over ``sinks ++ window``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Segments:
    """FlashInfer paged-KV plan input (page size 1), keys given as (request, position)."""

    qo_indptr: torch.Tensor  # [n_seg + 1] int32: query rows of each segment
    kv_indptr: torch.Tensor  # [n_seg + 1] int32: keys of each segment
    kv_req: torch.Tensor  # [nnz] int64: batch index of each key's request
    kv_pos: torch.Tensor  # [nnz] int64: absolute position of each key in its request

    @property
    def num_segments(self) -> int:
        return self.qo_indptr.numel() - 1


@dataclass(frozen=True)
class ExtraPlan:
    """The extra pass (``causal=False``) over the packed rows of the batch."""

    segments: Segments
    merge_mask: torch.Tensor  # [total_q] bool: rows that have extra keys (merge these)

    @property
    def empty(self) -> bool:
        """No row has an extra key: the pass can be skipped."""
        return not bool(self.merge_mask.any())


def _indptr(lengths: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
    out[1:] = torch.cumsum(lengths, 0)
    return out


def _ranges(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``arange(start, start + length)`` per segment; also the segment id of each item."""
    lengths = lengths.long()
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    offsets = torch.arange(seg.numel(), device=lengths.device) - first[seg]
    return seg, starts.long()[seg] + offsets


def _segments(req: torch.Tensor, q_len: torch.Tensor, kv_start: torch.Tensor, kv_len: torch.Tensor) -> Segments:
    seg_of_key, kv_pos = _ranges(kv_start, kv_len)
    return Segments(_indptr(q_len), _indptr(kv_len), req.long()[seg_of_key], kv_pos)


def plan_window(prefix_lens: torch.Tensor, extend_lens: torch.Tensor, window: int) -> Segments:
    """Window pass: per request, keys ``[max(0, prefix - W + 1), prefix + extend)``.

    With ``causal=True`` and ``window_left = W - 1`` FlashInfer aligns the last query
    with the last key, so the trimmed start keeps the rule exact (keys before it are
    outside every query's window) and saves reading them.
    """
    bs = prefix_lens.numel()
    start = torch.clamp(prefix_lens - (window - 1), min=0)
    req = torch.arange(bs, device=prefix_lens.device)
    return _segments(req, extend_lens, start, prefix_lens + extend_lens - start)


# The ForwardBatch attribute where the serving layer leaves ``generated_from`` (each request's prompt
# length, [bs] int64 on the CPU) for the backend: SGLang's batch does not carry it.
GENERATED_FROM_ATTR = "swaa_generated_from"


def generated_start(prefix_lens: torch.Tensor, extend_lens: torch.Tensor,
                    generated_from: torch.Tensor | None) -> torch.Tensor:
    """Per request, the position where this extend's generated rows start, within ``[p, p + e]``.

    ``generated_from`` ([bs]) is each request's prompt length: positions at or past it are tokens
    the model generated. None: every row is a prompt row (the result is ``p + e``).
    """
    end = prefix_lens.long() + extend_lens.long()
    if generated_from is None:
        return end
    return torch.minimum(torch.maximum(generated_from.long(), prefix_lens.long()), end)


def plan_extra(
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    window: int,
    keep_first: int,
    generated_from: torch.Tensor | None = None,
) -> ExtraPlan:
    """Extra pass for a sliding layer (``causal=False``): keys visible by the rule but outside the window.

    ``generated_from`` ([bs] int64, each request's prompt length) marks the rows at positions at or
    past it as generated rows on a layer with FA decode: they see everything before the window. A
    request with exactly one generated row in this extend (a decode row of a mixed batch) gets it
    here, keys ``[0, i - W + 1)``; longer generated runs are planned by :func:`plan_generated` and
    read one dummy key here. None: every row is a prompt row (the plan for layers without FA decode).
    """
    device = prefix_lens.device
    bs = prefix_lens.numel()
    p, e = prefix_lens.long(), extend_lens.long()
    w, k = window, keep_first
    end = p + e
    gen_start = generated_start(p, e, generated_from)
    # Per request, prompt rows i in [p, gen_start) split into three runs by position:
    #   head    i < W              no extra key
    #   partial W <= i < W + k - 1  sinks [0, i - W + 1), one segment per row
    #   tail    i >= W + k - 1     all k sinks
    # then the generated rows [gen_start, end), one segment.
    head_end = torch.minimum(torch.maximum(p, torch.full_like(p, w)), gen_start)
    tail_start = torch.minimum(torch.maximum(p, torch.full_like(p, w + max(k - 1, 0))), gen_start)
    n_head = head_end - p
    n_partial = tail_start - head_end
    n_tail = gen_start - tail_start
    n_gen = end - gen_start

    # Segment table, request-major: [head?, partial rows..., tail?, generated?] for each request.
    has_head, has_tail, has_gen = n_head > 0, n_tail > 0, n_gen > 0
    segs_per_req = has_head.long() + n_partial + has_tail.long() + has_gen.long()
    seg_req = torch.repeat_interleave(torch.arange(bs, device=device), segs_per_req)
    seg_rank = torch.arange(seg_req.numel(), device=device) - (torch.cumsum(segs_per_req, 0) - segs_per_req)[seg_req]
    last = segs_per_req[seg_req] - 1
    is_head = (seg_rank == 0) & has_head[seg_req]
    is_gen = has_gen[seg_req] & (seg_rank == last)
    is_tail = has_tail[seg_req] & (seg_rank == last - has_gen[seg_req].long())

    # Query rows per segment and the position of each segment's first row.
    q_len = torch.where(
        is_head, n_head[seg_req], torch.where(is_tail, n_tail[seg_req], torch.where(is_gen, n_gen[seg_req], 1))
    )
    partial_pos = head_end[seg_req] + seg_rank - has_head[seg_req].long()
    first_pos = torch.where(
        is_head, p[seg_req],
        torch.where(is_tail, tail_start[seg_req], torch.where(is_gen, gen_start[seg_req], partial_pos)),
    )
    # Keys per segment: all start at position 0. A single generated row sees [0, i - W + 1).
    single_gen = n_gen == 1
    gen_keys = torch.where(single_gen[seg_req], end[seg_req] - w, 0)
    kv_len = torch.where(
        is_head, 1, torch.where(is_tail, k, torch.where(is_gen, gen_keys, first_pos - w + 1))
    )
    kv_len = torch.where(kv_len > 0, kv_len, 1)  # an empty row set reads one dummy key, not merged
    segments = _segments(seg_req, q_len, torch.zeros_like(kv_len), kv_len)

    # A row merges iff it sees some key j <= i - W here: position i >= W and it is a prompt row
    # with sinks, or the single generated row of its request.
    row_req, row_pos = _ranges(p, e)
    generated = row_pos >= gen_start[row_req]
    merge_mask = (row_pos >= w) & torch.where(generated, single_gen[row_req], k > 0)
    return ExtraPlan(segments, merge_mask)


@dataclass(frozen=True)
class GeneratedPlan:
    """Causal pass over generated rows that see everything before their window.

    FlashInfer runs it on the gathered query rows ``q[rows]``: one segment per request, its rows
    at positions ``[t, end)`` (``t >= W``) and keys ``[0, end - W)``; ``causal=True`` aligns the last
    row with the last key, so the row at position i reads ``[0, i - W + 1)`` and every segment
    has at least as many keys as rows.
    """

    segments: Segments
    rows: torch.Tensor  # [n] int64: packed batch row of each query row of the pass


def plan_generated(
    prefix_lens: torch.Tensor, extend_lens: torch.Tensor, window: int, generated_from: torch.Tensor
) -> GeneratedPlan | None:
    """Generated runs of two or more rows (a retracted request prefilled again) on a layer with FA decode.

    None when no row needs it: runs of one row are planned by :func:`plan_extra`.
    """
    device = prefix_lens.device
    p, e = prefix_lens.long(), extend_lens.long()
    end = p + e
    gen_start = generated_start(p, e, generated_from)
    run = end - gen_start >= 2
    first = torch.maximum(gen_start, torch.full_like(gen_start, window))
    q_len = torch.where(run, torch.clamp(end - first, min=0), 0)
    if not bool((q_len > 0).any()):
        return None
    req = torch.nonzero(q_len > 0).flatten()
    q_len, first = q_len[req], first[req]
    segments = _segments(req, q_len, torch.zeros_like(q_len), end[req] - window)
    row_start = (torch.cumsum(e, 0) - e)[req] + first - p[req]
    _, rows = _ranges(row_start, q_len)
    return GeneratedPlan(segments, rows.to(device))


def decode_ranges(seq_lens: torch.Tensor, window: int, keep_first: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode without FA decode: per request, ``sinks = [0, n_sink)`` and ``window = [win_start, L)``.

    Returns ``(n_sink, win_start, win_len)``; ``seq_lens`` includes the token being decoded
    (its KV is written first). Batch-sized tensor ops only, on any device, no host sync.
    """
    L = seq_lens.long()
    n_sink = torch.clamp(L, max=keep_first)
    win_start = torch.maximum(n_sink, L - window)
    return n_sink, win_start, L - win_start


def plan_decode(seq_lens: torch.Tensor, window: int, keep_first: int) -> Segments:
    """Decode on a sliding layer without FA decode: keys ``sinks ++ last W``, one query each.

    The checkable form of the decode plan: the backend builds the same index list on the GPU
    from :func:`decode_ranges` with two range copies (``flashinfer_ops.copy_ranges``), and the
    CPU suite checks both against the rule through this function.
    """
    bs = seq_lens.numel()
    n_sink, win_start, win_len = decode_ranges(seq_lens, window, keep_first)
    # Two ranges per request, interleaved so each request's keys stay contiguous.
    starts = torch.stack([torch.zeros_like(win_start), win_start], 1).flatten()
    lens = torch.stack([n_sink, win_len], 1).flatten()
    seg_of_key, kv_pos = _ranges(starts, lens)
    req = torch.arange(bs, device=seq_lens.device)
    return Segments(_indptr(torch.ones_like(n_sink)), _indptr(n_sink + win_len), req[seg_of_key // 2], kv_pos)


def kv_slots(segments: Segments, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor) -> torch.Tensor:
    """KV pool slot of every key in a plan (int32, FlashInfer's ``paged_kv_indices``)."""
    return req_to_token[req_pool_indices.long()[segments.kv_req], segments.kv_pos].to(torch.int32)
