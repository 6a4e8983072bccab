"""The fused sink pass: window pass + sinks merged by log-sum-exp equals the rule (CPU reference)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attention_backends.sink_merge import row_blocks, sink_limits, sink_merge_reference
from swaa_sglang import SWAAConfig, masked_attention, swaa_attention, visibility_mask


@settings(max_examples=40, deadline=None)
@given(
    prefix=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    extend=st.lists(st.integers(1, 30), min_size=3, max_size=3),
    w=st.integers(1, 20),
    k=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_window_pass_plus_sink_merge_equals_rule(prefix, extend, w, k, seed):
    extend = extend[: len(prefix)]
    g = torch.Generator().manual_seed(seed)
    hq, hk, d = 4, 2, 8
    seq_lens = [p + e for p, e in zip(prefix, extend)]
    n_slots = sum(seq_lens) + 5
    k_pool = torch.randn(n_slots, hk, d, generator=g, dtype=torch.float64)
    v_pool = torch.randn(n_slots, hk, d, generator=g, dtype=torch.float64)
    perm = torch.randperm(n_slots, generator=g)
    req_to_token = torch.zeros(len(seq_lens), max(seq_lens) + k + 1, dtype=torch.long)
    used = 0
    for b, L in enumerate(seq_lens):
        req_to_token[b, :L] = perm[used : used + L]
        used += L
    q = torch.randn(sum(extend), hq, d, generator=g, dtype=torch.float64)
    window_only = SWAAConfig(sliding_window_size=w)
    full_cfg = SWAAConfig(sliding_window_size=w, keep_first=k)
    o_parts, lse_parts, ref_parts, row = [], [], [], 0
    for b, (p, e) in enumerate(zip(prefix, extend)):
        slots = req_to_token[b, : p + e]
        q_pos, k_pos = torch.arange(p, p + e), torch.arange(p + e)
        mask = visibility_mask(window_only, 0, q_pos, k_pos)
        o_b, lse_b = masked_attention(q[row : row + e], k_pool[slots], v_pool[slots], mask, scale=0.4)
        o_parts.append(o_b)
        lse_parts.append(lse_b)
        ref_parts.append(swaa_attention(q[row : row + e], k_pool[slots], v_pool[slots], full_cfg, 0, q_pos, k_pos, scale=0.4))
        row += e
    o, lse = torch.cat(o_parts), torch.cat(lse_parts)
    limits = sink_limits(torch.tensor(prefix), torch.tensor(extend), w, k)
    row_req = torch.repeat_interleave(torch.arange(len(extend)), torch.tensor(extend))
    sink_merge_reference(q, k_pool, v_pool, o, lse, req_to_token[:, : max(k, 1)], row_req, limits, 0.4)
    torch.testing.assert_close(o, torch.cat(ref_parts), rtol=1e-9, atol=1e-9)


def test_sink_limits_and_blocks():
    limits = sink_limits(torch.tensor([0, 10]), torch.tensor([6, 3]), 3, 2)
    # request 0 rows at 0..5: i - W + 1 = -2..3 clamped to [0, 2]; request 1 rows at 10..12: all 2
    assert limits.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2]
    assert row_blocks(torch.tensor([5, 1, 9]), 4).tolist() == [
        [0, 0, 4], [0, 4, 5], [1, 5, 6], [2, 6, 10], [2, 10, 14], [2, 14, 15]]
