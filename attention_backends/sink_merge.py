"""Sinks outside the window, fused with the log-sum-exp merge: one pass over q and o.

After the windowed FlashInfer pass has written ``o`` (bf16) and ``lse`` (base 2) for every
row, each row i still owes the sinks ``j < limit[i]`` with ``limit[i] = clamp(i - W + 1, 0, k)``
(keys ``j <= i - W``: none is counted twice). Done by FlashInfer this is a second prefill pass
(reads q, writes a second output) and a merge (reads both outputs, writes one): about five
passes over a ``[tokens, heads, dim]`` tensor. Here one Triton program per block of rows of one
request loads that request's k sink keys once, computes their attention for every query head
of a KV group, and merges into ``o`` in place: q read once, o read and written once.

:func:`sink_merge_reference` is the same contract in torch (CPU tests check the math against
the rule); the GPU tests check the kernel against it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference still works
    triton = None


def sink_merge_reference(
    q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    sink_slots: torch.Tensor, row_req: torch.Tensor, row_limit: torch.Tensor, sm_scale: float,
) -> None:
    """In place: merge into ``o``/``lse`` the attention of row r over sinks ``sink_slots[row_req[r], :row_limit[r]]``.

    q/o ``[N, Hq, D]``, lse ``[N, Hq]`` (base 2), pools ``[slots, Hk, D]``, sink_slots ``[B, kmax]``.
    """
    group = q.shape[1] // k_pool.shape[1]
    dt = torch.promote_types(q.dtype, torch.float32)
    for r in range(q.shape[0]):
        n = int(row_limit[r])
        if n <= 0:
            continue
        slots = sink_slots[int(row_req[r]), :n].long()
        k = k_pool[slots].to(dt).repeat_interleave(group, 1)  # [n, Hq, D]
        v = v_pool[slots].to(dt).repeat_interleave(group, 1)
        s = torch.einsum("hd,nhd->hn", q[r].to(dt), k) * sm_scale / math.log(2)  # base-2 logits
        lse_s = torch.logsumexp(s * math.log(2), -1) / math.log(2)
        o_s = torch.einsum("hn,nhd->hd", torch.softmax(s * math.log(2), -1), v)
        m = torch.maximum(lse[r], lse_s)
        w_o, w_s = torch.exp2(lse[r] - m), torch.exp2(lse_s - m)
        o[r] = ((o[r].to(dt) * w_o[:, None] + o_s * w_s[:, None]) / (w_o + w_s)[:, None]).to(o.dtype)
        lse[r] = m + torch.log2(w_o + w_s)


if triton is not None:

    @triton.jit
    def _sink_merge_kernel(
        Q, K, V, O, LSE, SINK_SLOTS, BLOCKS, ROW_LIMIT,
        stride_qn, stride_qh, stride_kn, stride_kh, stride_on, stride_oh, stride_ln, stride_lh, stride_ss,
        sm_scale_log2,
        GROUP: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, KMAX: tl.constexpr,
    ):
        blk = tl.program_id(0)
        kv_head = tl.program_id(1)
        req = tl.load(BLOCKS + blk * 3)
        row0 = tl.load(BLOCKS + blk * 3 + 1)
        row1 = tl.load(BLOCKS + blk * 3 + 2)
        rows = (row0 + tl.arange(0, BLOCK_M)).to(tl.int64)  # int64: rows * stride can pass 2**31
        row_ok = rows < row1
        limit = tl.load(ROW_LIMIT + rows, mask=row_ok, other=0)  # sinks each row sees
        n_keys = tl.max(limit, 0)
        if n_keys > 0:
            kidx = tl.arange(0, KMAX)
            slots = tl.load(SINK_SLOTS + req * stride_ss + kidx, mask=kidx < n_keys, other=0).to(tl.int64)
            dims = tl.arange(0, D)
            kv_off = slots[:, None] * stride_kn + kv_head * stride_kh + dims[None, :]
            k = tl.load(K + kv_off, mask=(kidx < n_keys)[:, None], other=0.0)  # [KMAX, D]
            v = tl.load(V + kv_off, mask=(kidx < n_keys)[:, None], other=0.0)
            visible = kidx[None, :] < limit[:, None]  # [BLOCK_M, KMAX]
            merge = row_ok & (limit > 0)
            for g in tl.static_range(GROUP):
                h = kv_head * GROUP + g
                q = tl.load(Q + rows[:, None] * stride_qn + h * stride_qh + dims[None, :], mask=row_ok[:, None], other=0.0)
                s = tl.dot(q, tl.trans(k)) * sm_scale_log2  # base-2 logits [BLOCK_M, KMAX]
                s = tl.where(visible, s, float("-inf"))
                m_s = tl.max(s, 1)
                m_s = tl.where(merge, m_s, 0.0)
                p = tl.exp2(s - m_s[:, None])
                l_s = tl.sum(p, 1)
                o_s = tl.dot(p.to(v.dtype), v)  # unnormalized [BLOCK_M, D]
                lse_s = m_s + tl.log2(tl.where(merge, l_s, 1.0))
                lse_ptr = LSE + rows * stride_ln + h * stride_lh
                lse_w = tl.load(lse_ptr, mask=merge, other=0.0)
                m = tl.maximum(lse_w, lse_s)
                w_w = tl.exp2(lse_w - m)
                w_s = tl.exp2(lse_s - m)
                o_ptr = O + rows[:, None] * stride_on + h * stride_oh + dims[None, :]
                o_w = tl.load(o_ptr, mask=merge[:, None], other=0.0).to(tl.float32)
                out = (o_w * w_w[:, None] + o_s * (w_s / tl.where(merge, l_s, 1.0))[:, None]) / (w_w + w_s)[:, None]
                tl.store(o_ptr, out.to(O.dtype.element_ty), mask=merge[:, None])
                tl.store(lse_ptr, m + tl.log2(w_w + w_s), mask=merge)


def sink_merge(
    q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    sink_slots: torch.Tensor, blocks: torch.Tensor, row_limit: torch.Tensor, sm_scale: float,
    block_m: int = 64,
) -> None:
    """The Triton kernel: ``blocks`` ``[n, 3]`` int32 rows (request, first row, end row), each at most ``block_m`` rows."""
    num_kv_heads, d = k_pool.shape[1], k_pool.shape[2]
    group = q.shape[1] // num_kv_heads
    kmax = max(16, triton.next_power_of_2(sink_slots.shape[1]))
    grid = (blocks.shape[0], num_kv_heads)
    _sink_merge_kernel[grid](
        q, k_pool, v_pool, o, lse, sink_slots, blocks, row_limit,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), o.stride(0), o.stride(1),
        lse.stride(0), lse.stride(1), sink_slots.stride(0),
        sm_scale * math.log2(math.e),
        GROUP=group, D=d, BLOCK_M=block_m, KMAX=kmax,
    )


def row_blocks(extend_lens: torch.Tensor, block_m: int) -> torch.Tensor:
    """``[n, 3]`` int32 (request, first row, end row): row blocks that never cross a request."""
    e = extend_lens.long()
    n_blocks = (e + block_m - 1) // block_m
    req = torch.repeat_interleave(torch.arange(e.numel()), n_blocks)
    first_row = torch.cumsum(e, 0) - e
    rank = torch.arange(req.numel()) - (torch.cumsum(n_blocks, 0) - n_blocks)[req]
    start = first_row[req] + rank * block_m
    end = torch.minimum(start + block_m, first_row[req] + e[req])
    return torch.stack([req, start, end], 1).to(torch.int32)


def sink_limits(prefix_lens: torch.Tensor, extend_lens: torch.Tensor, window: int, keep_first: int,
                full_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per packed row: how many sinks it sees outside its window, ``clamp(i - W + 1, 0, k)``."""
    if full_rows is not None and bool(full_rows.any()):
        raise ValueError("sink_limits: rows with FA decode see more than the sinks; use the FlashInfer extra pass")
    e = extend_lens.long()
    req = torch.repeat_interleave(torch.arange(e.numel()), e)
    pos = prefix_lens.long()[req] + torch.arange(req.numel()) - (torch.cumsum(e, 0) - e)[req]
    return torch.clamp(pos - window + 1, min=0, max=keep_first).to(torch.int32)
