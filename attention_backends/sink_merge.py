"""Sinks outside the window, fused with the log-sum-exp merge: one pass over q and o.

After the windowed FlashInfer pass has written ``o`` (bf16) and ``lse`` (base 2) for every
row, each row i still owes the sinks ``j < limit[i]`` with ``limit[i] = clamp(i - W + 1, 0, k)``
(keys ``j <= i - W``: none is counted twice). Done by FlashInfer this is a second prefill pass
(reads q, writes a second output) and a merge (reads both outputs, writes one): about five
passes over a ``[tokens, heads, dim]`` tensor. Here one Triton program per block of rows of one
request loads that request's sink keys, computes their attention for every query head of a
KV group, and merges into ``o`` in place: q read once, o read and written once. Up to about 256
sinks (at head dim 128) sit in one tile loaded once per KV group; more are read in tiles of 64
keys with an online log-sum-exp, so any ``keep_first`` fits in shared memory.

:func:`sink_merge_reference` is the same contract in torch (CPU tests check the math against
the rule); the GPU tests check the kernel against it.
"""

from __future__ import annotations

import math

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


# Up to SINGLE_TILE_KEYS sinks (and that many keys x head dim at most SINGLE_TILE_ELEMENTS) the
# kernel holds all sinks of a request in one tile, loaded once for every query head of the KV
# group (k = 256 at D = 128 fits an H200's shared memory); beyond it, tiles of TILE_KEYS keys
# with an online softmax, so any k runs.
SINGLE_TILE_KEYS = 256
SINGLE_TILE_ELEMENTS = 256 * 128
TILE_KEYS = 64

if triton is not None:

    @triton.jit
    def _sink_tile(q, k, v, visible, m, l, acc, sm_scale_log2):
        """One tile of sink keys into a row block's online softmax state (base 2; ``acc`` unnormalized)."""
        s = tl.dot(q, tl.trans(k)) * sm_scale_log2
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see no key yet: 0 weights, no NaN
        alpha = tl.exp2(m - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return m_new, l, acc

    @triton.jit
    def _merge_into_window(O, LSE, rows, h, dims, merge, m, l, acc, stride_on, stride_oh, stride_ln, stride_lh):
        """Merge the sinks' (m, l, acc) into the window pass's o / lse of head h, in place."""
        l_safe = tl.where(merge, l, 1.0)
        lse_s = tl.where(merge, m, 0.0) + tl.log2(l_safe)
        lse_ptr = LSE + rows * stride_ln + h * stride_lh
        lse_w = tl.load(lse_ptr, mask=merge, other=0.0)
        m_all = tl.maximum(lse_w, lse_s)
        w_w = tl.exp2(lse_w - m_all)
        w_s = tl.exp2(lse_s - m_all)
        o_ptr = O + rows[:, None] * stride_on + h * stride_oh + dims[None, :]
        o_w = tl.load(o_ptr, mask=merge[:, None], other=0.0).to(tl.float32)
        out = (o_w * w_w[:, None] + acc * (w_s / l_safe)[:, None]) / (w_w + w_s)[:, None]
        tl.store(o_ptr, out.to(O.dtype.element_ty), mask=merge[:, None])
        tl.store(lse_ptr, m_all + tl.log2(w_w + w_s), mask=merge)

    @triton.jit
    def _sink_merge_kernel(
        Q, K, V, O, LSE, SINK_SLOTS, BLOCKS, ROW_LIMIT,
        stride_qn, stride_qh, stride_kn, stride_kh, stride_on, stride_oh, stride_ln, stride_lh, stride_ss,
        sm_scale_log2,
        GROUP: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
        SINGLE_TILE: tl.constexpr,
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
            dims = tl.arange(0, D)
            merge = row_ok & (limit > 0)
            if SINGLE_TILE:
                # all sinks in one tile (BLOCK_K >= k), loaded once for the whole KV group
                kidx = tl.arange(0, BLOCK_K)
                slots = tl.load(SINK_SLOTS + req * stride_ss + kidx, mask=kidx < n_keys, other=0).to(tl.int64)
                kv_off = slots[:, None] * stride_kn + kv_head * stride_kh + dims[None, :]
                k = tl.load(K + kv_off, mask=(kidx < n_keys)[:, None], other=0.0)  # [BLOCK_K, D]
                v = tl.load(V + kv_off, mask=(kidx < n_keys)[:, None], other=0.0)
                visible = kidx[None, :] < limit[:, None]  # [BLOCK_M, BLOCK_K]
                for g in tl.static_range(GROUP):
                    h = kv_head * GROUP + g
                    q = tl.load(Q + rows[:, None] * stride_qn + h * stride_qh + dims[None, :], mask=row_ok[:, None],
                                other=0.0)
                    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
                    l = tl.zeros([BLOCK_M], tl.float32)
                    acc = tl.zeros([BLOCK_M, D], tl.float32)
                    m, l, acc = _sink_tile(q, k, v, visible, m, l, acc, sm_scale_log2)
                    _merge_into_window(O, LSE, rows, h, dims, merge, m, l, acc, stride_on, stride_oh, stride_ln,
                                       stride_lh)
            else:
                for g in tl.static_range(GROUP):
                    h = kv_head * GROUP + g
                    q = tl.load(Q + rows[:, None] * stride_qn + h * stride_qh + dims[None, :], mask=row_ok[:, None],
                                other=0.0)
                    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
                    l = tl.zeros([BLOCK_M], tl.float32)
                    acc = tl.zeros([BLOCK_M, D], tl.float32)
                    for k0 in range(0, n_keys, BLOCK_K):
                        kidx = k0 + tl.arange(0, BLOCK_K)
                        key_ok = kidx < n_keys
                        slots = tl.load(SINK_SLOTS + req * stride_ss + kidx, mask=key_ok, other=0).to(tl.int64)
                        kv_off = slots[:, None] * stride_kn + kv_head * stride_kh + dims[None, :]
                        k = tl.load(K + kv_off, mask=key_ok[:, None], other=0.0)  # [BLOCK_K, D]
                        v = tl.load(V + kv_off, mask=key_ok[:, None], other=0.0)
                        visible = kidx[None, :] < limit[:, None]
                        m, l, acc = _sink_tile(q, k, v, visible, m, l, acc, sm_scale_log2)
                    _merge_into_window(O, LSE, rows, h, dims, merge, m, l, acc, stride_on, stride_oh, stride_ln,
                                       stride_lh)


def sink_merge(
    q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    sink_slots: torch.Tensor, blocks: torch.Tensor, row_limit: torch.Tensor, sm_scale: float,
    block_m: int = 64,
) -> None:
    """The Triton kernel: ``blocks`` ``[n, 3]`` int32 rows (request, first row, end row), each at most ``block_m`` rows.

    Any number of sinks: up to :data:`SINGLE_TILE_KEYS` (and :data:`SINGLE_TILE_ELEMENTS` keys x
    head dim) in one tile, else in tiles of :data:`TILE_KEYS` keys merged by an online log-sum-exp.
    """
    num_kv_heads, d = k_pool.shape[1], k_pool.shape[2]
    group = q.shape[1] // num_kv_heads
    kmax = max(16, triton.next_power_of_2(sink_slots.shape[1]))
    single_tile = kmax <= SINGLE_TILE_KEYS and kmax * d <= SINGLE_TILE_ELEMENTS
    grid = (blocks.shape[0], num_kv_heads)
    _sink_merge_kernel[grid](
        q, k_pool, v_pool, o, lse, sink_slots, blocks, row_limit,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), o.stride(0), o.stride(1),
        lse.stride(0), lse.stride(1), sink_slots.stride(0),
        sm_scale * math.log2(math.e),
        GROUP=group, D=d, BLOCK_M=block_m, BLOCK_K=kmax if single_tile else TILE_KEYS, SINGLE_TILE=single_tile,
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


def sink_limits(prefix_lens: torch.Tensor, extend_lens: torch.Tensor, window: int, keep_first: int) -> torch.Tensor:
    """Per packed row: how many sinks it sees outside its window, ``clamp(i - W + 1, 0, k)`` (prompt rows)."""
    e = extend_lens.long()
    req = torch.repeat_interleave(torch.arange(e.numel()), e)
    pos = prefix_lens.long()[req] + torch.arange(req.numel()) - (torch.cumsum(e, 0) - e)[req]
    return torch.clamp(pos - window + 1, min=0, max=keep_first).to(torch.int32)
