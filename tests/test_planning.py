"""Planning against the reference rule, by brute force.

Each plan is interpreted the way FlashInfer reads it (page size 1; ``causal``
aligns a segment's last query with its last key; ``window_left`` keeps keys
``c >= r + (kv_len - qo_len) - window_left``), the key sets of the passes are
united per query row, and the result must equal ``visibility_mask`` row by row,
with no key read twice.
"""

from __future__ import annotations

from collections import Counter

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attention_backends.planning import Segments, kv_slots, plan_decode, plan_extra, plan_window
from swaa_sglang import SWAAConfig, visibility_mask


def read_keys(seg: Segments, causal: bool, window_left: int = -1) -> dict[int, list[tuple[int, int]]]:
    """Row -> list of (request, position) keys FlashInfer reads for it under this plan."""
    out: dict[int, list[tuple[int, int]]] = {}
    for s in range(seg.num_segments):
        q0, q1 = int(seg.qo_indptr[s]), int(seg.qo_indptr[s + 1])
        k0, k1 = int(seg.kv_indptr[s]), int(seg.kv_indptr[s + 1])
        keys = list(zip(seg.kv_req[k0:k1].tolist(), seg.kv_pos[k0:k1].tolist()))
        qo_len, kv_len = q1 - q0, k1 - k0
        for r in range(qo_len):
            vis = []
            for c, key in enumerate(keys):
                if causal and c > r + kv_len - qo_len:
                    continue
                if window_left >= 0 and c < r + kv_len - qo_len - window_left:
                    continue
                vis.append(key)
            out.setdefault(q0 + r, []).extend(vis)
    return out


def check_extend_batch(prefix, extend, w, k, fa_rows, layer_fa: bool):
    prefix_t, extend_t = torch.tensor(prefix), torch.tensor(extend)
    cfg = SWAAConfig(sliding_window_size=w, keep_first=k, force_fa_decode=layer_fa)
    full_rows = torch.tensor(fa_rows) & layer_fa
    win = plan_window(prefix_t, extend_t, w)
    extra = plan_extra(prefix_t, extend_t, w, k, full_rows)
    assert int(win.qo_indptr[-1]) == sum(extend) == int(extra.segments.qo_indptr[-1])
    assert extra.merge_mask.numel() == sum(extend)
    win_keys = read_keys(win, causal=True, window_left=w - 1)
    extra_keys = read_keys(extra.segments, causal=False)
    row = 0
    for b, (p, e) in enumerate(zip(prefix, extend)):
        q_pos = torch.arange(p, p + e)
        mask = visibility_mask(cfg, 0, q_pos, torch.arange(p + e), decode=torch.full((e,), fa_rows[b]))
        for a in range(e):
            got = list(win_keys.get(row, []))
            if extra.merge_mask[row]:
                got += extra_keys[row]
            assert all(req == b for req, _ in got), "a row read another request's keys"
            counts = Counter(pos for _, pos in got)
            assert max(counts.values()) == 1, f"row {row}: key read twice {counts}"
            expected = set(torch.nonzero(mask[a]).flatten().tolist())
            assert set(counts) == expected, (b, p + a, sorted(set(counts) ^ expected))
            row += 1


batches = st.integers(1, 5).flatmap(
    lambda bs: st.tuples(
        st.lists(st.integers(0, 60), min_size=bs, max_size=bs),
        st.lists(st.integers(1, 40), min_size=bs, max_size=bs),
        st.lists(st.booleans(), min_size=bs, max_size=bs),
    )
)


@settings(max_examples=300, deadline=None)
@given(batch=batches, w=st.integers(1, 24), k=st.integers(0, 30), layer_fa=st.booleans())
def test_extend_plans_match_rule(batch, w, k, layer_fa):
    prefix, extend, decode = batch
    # generated rows (mixed batches) are single-token extends
    extend = [1 if d else e for e, d in zip(extend, decode)]
    check_extend_batch(prefix, extend, w, k, decode, layer_fa)


def test_extend_edge_cases():
    # W = 1, sinks longer than the sequence, chunk exactly at the window edge, huge k
    check_extend_batch([0], [7], 1, 0, [False], False)
    check_extend_batch([0], [7], 1, 3, [False], False)
    check_extend_batch([5, 0, 9], [4, 12, 1], 4, 100, [False, False, True], True)
    check_extend_batch([4], [4], 4, 2, [False], False)
    check_extend_batch([0], [50], 8, 8, [False], False)


def test_extra_pass_is_skipped_when_nothing_lies_outside_the_window():
    assert plan_extra(torch.tensor([0]), torch.tensor([10]), 16, 4).empty
    assert plan_extra(torch.tensor([0]), torch.tensor([100]), 16, 0).empty
    assert not plan_extra(torch.tensor([0]), torch.tensor([17]), 16, 1).empty


def test_all_sink_rows_share_one_unmasked_segment():
    """The cost model: rows that see all k sinks form one segment; at most k - 1 partial rows."""
    w, k, n = 64, 10, 1000
    extra = plan_extra(torch.tensor([0]), torch.tensor([n]), w, k)
    seg = extra.segments
    assert seg.num_segments == 1 + (k - 1) + 1  # head, partial rows, tail
    assert int(seg.qo_indptr[-1] - seg.qo_indptr[-2]) == n - (w + k - 1)
    assert int(seg.kv_indptr[-1]) == 1 + sum(range(1, k)) + k


@settings(max_examples=200, deadline=None)
@given(
    seq_lens=st.lists(st.integers(1, 90), min_size=1, max_size=6),
    w=st.integers(1, 30),
    k=st.integers(0, 40),
)
def test_decode_plan_matches_rule(seq_lens, w, k):
    cfg = SWAAConfig(sliding_window_size=w, keep_first=k)
    seg = plan_decode(torch.tensor(seq_lens), w, k)
    keys = read_keys(seg, causal=False)
    for b, L in enumerate(seq_lens):
        got = [pos for req, pos in keys[b] if req == b]
        assert len(got) == len(keys[b]) == len(set(got))
        expected = visibility_mask(cfg, 0, torch.tensor([L - 1]), torch.arange(L), decode=True)[0]
        assert sorted(got) == torch.nonzero(expected).flatten().tolist()
        assert len(got) <= w + k  # O(W + k), whatever the length


def test_kv_slots_gather_through_req_to_token():
    req_to_token = torch.arange(3 * 50).reshape(3, 50) * 7
    seg = plan_decode(torch.tensor([20, 45]), 4, 2)
    slots = kv_slots(seg, req_to_token, torch.tensor([2, 0]))
    assert slots.dtype == torch.int32
    expected = [req_to_token[2, p] for p in [0, 1, 16, 17, 18, 19]] + [req_to_token[0, p] for p in [0, 1, 41, 42, 43, 44]]
    assert slots.tolist() == [int(x) for x in expected]


@settings(max_examples=100, deadline=None)
@given(seq_lens=st.lists(st.integers(1, 90), min_size=1, max_size=6), w=st.integers(1, 30), k=st.integers(0, 40))
def test_decode_range_copies_equal_the_plan(seq_lens, w, k):
    """The decode path builds its index list with two range copies; they must give the plan's slots."""
    from attention_backends.flashinfer_ops import copy_ranges
    from attention_backends.planning import decode_ranges

    bs = len(seq_lens)
    req_to_token = torch.randperm(1000)[: (bs + 2) * 100].view(bs + 2, 100).int()
    rpi = torch.randperm(bs + 2)[:bs]
    L = torch.tensor(seq_lens)
    n_sink, win_start, win_len = decode_ranges(L, w, k)
    offsets = torch.cumsum(n_sink + win_len, 0) - (n_sink + win_len)
    out = torch.full((int((n_sink + win_len).sum()),), -1, dtype=torch.int32)
    copy_ranges(req_to_token, rpi, n_sink, offsets, None, out)
    copy_ranges(req_to_token, rpi, win_len, offsets + n_sink, win_start, out)
    assert torch.equal(out, kv_slots(plan_decode(L, w, k), req_to_token, rpi))
