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

from attention_backends.planning import Segments, kv_slots, plan_decode, plan_extra, plan_generated, plan_window
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


NO_OUTPUT = 10**9  # a prompt length past every position: no generated row


def check_extend_batch(prefix, extend, w, k, generated_from, layer_fa: bool):
    """Plan a batch as the backend does and compare each row's keys with the rule.

    ``generated_from[b]`` is request b's prompt length: rows at positions at or past it are
    generated. On a layer with FA decode the backend plans the extra pass with it, plus the
    generated pass; on a layer without, every row keeps the prompt rule.
    """
    prefix_t, extend_t = torch.tensor(prefix), torch.tensor(extend)
    gen_t = torch.tensor(generated_from)
    cfg = SWAAConfig(sliding_window_size=w, keep_first=k, force_fa_decode=layer_fa)
    win = plan_window(prefix_t, extend_t, w)
    extra = plan_extra(prefix_t, extend_t, w, k, gen_t if layer_fa else None)
    gen = plan_generated(prefix_t, extend_t, w, gen_t) if layer_fa else None
    assert int(win.qo_indptr[-1]) == sum(extend) == int(extra.segments.qo_indptr[-1])
    assert extra.merge_mask.numel() == sum(extend)
    win_keys = read_keys(win, causal=True, window_left=w - 1)
    extra_keys = read_keys(extra.segments, causal=False)
    gen_keys: dict[int, list[tuple[int, int]]] = {}
    if gen is not None:
        seg = gen.segments
        q_lens, kv_lens = seg.qo_indptr.diff(), seg.kv_indptr.diff()
        assert bool((q_lens > 0).all()) and bool((kv_lens >= q_lens).all()), "FlashInfer causal needs kv_len >= qo_len"
        assert int(seg.qo_indptr[-1]) == gen.rows.numel() == len(set(gen.rows.tolist()))
        for r, keys in read_keys(seg, causal=True).items():
            gen_keys[int(gen.rows[r])] = keys
        assert not any(bool(extra.merge_mask[r]) for r in gen_keys), "a row merged from both extra passes"
    row = 0
    for b, (p, e) in enumerate(zip(prefix, extend)):
        q_pos = torch.arange(p, p + e)
        mask = visibility_mask(cfg, 0, q_pos, torch.arange(p + e), decode=q_pos >= generated_from[b])
        for a in range(e):
            got = list(win_keys.get(row, []))
            if extra.merge_mask[row]:
                got += extra_keys[row]
            if row in gen_keys:
                assert gen_keys[row], f"row {row}: merged from the generated pass with no key"
                got += gen_keys[row]
            assert all(req == b for req, _ in got), "a row read another request's keys"
            counts = Counter(pos for _, pos in got)
            assert max(counts.values()) == 1, f"row {row}: key read twice {counts}"
            expected = set(torch.nonzero(mask[a]).flatten().tolist())
            assert set(counts) == expected, (b, p + a, sorted(set(counts) ^ expected))
            row += 1


def _prompt_len(p: int, e: int, choice: int) -> int:
    """A prompt length placed relative to the extend [p, p + e): before, inside, at its end, or none."""
    return [max(0, p - 3), p, p + min(e, 5) // 2, p + e - 1, p + e, NO_OUTPUT][choice]


batches = st.integers(1, 5).flatmap(
    lambda bs: st.tuples(
        st.lists(st.integers(0, 60), min_size=bs, max_size=bs),
        st.lists(st.integers(1, 40), min_size=bs, max_size=bs),
        st.lists(st.integers(0, 5), min_size=bs, max_size=bs),
        st.lists(st.integers(0, 100), min_size=bs, max_size=bs),
        st.lists(st.booleans(), min_size=bs, max_size=bs),
    )
)


@settings(max_examples=400, deadline=None)
@given(batch=batches, w=st.integers(1, 24), k=st.integers(0, 30), layer_fa=st.booleans())
def test_extend_plans_match_rule(batch, w, k, layer_fa):
    """Prefill, chunks over a cached prefix, mixed decode rows, and generated rows recomputed after a
    retraction (extends straddling the prompt boundary), many requests per batch."""
    prefix, extend, placement, anywhere, random_place = batch
    generated_from = [
        g if rnd else _prompt_len(p, e, c) for p, e, c, g, rnd in zip(prefix, extend, placement, anywhere, random_place)
    ]
    check_extend_batch(prefix, extend, w, k, generated_from, layer_fa)


def test_extend_edge_cases():
    # W = 1, sinks longer than the sequence, chunk exactly at the window edge, huge k
    check_extend_batch([0], [7], 1, 0, [NO_OUTPUT], False)
    check_extend_batch([0], [7], 1, 3, [NO_OUTPUT], False)
    check_extend_batch([5, 0, 9], [4, 12, 1], 4, 100, [NO_OUTPUT, NO_OUTPUT, 9], True)
    check_extend_batch([4], [4], 4, 2, [NO_OUTPUT], False)
    check_extend_batch([0], [50], 8, 8, [NO_OUTPUT], False)


def test_generated_rows_straddling_the_prompt_boundary():
    """A retracted request prefilled again: prompt rows keep the sinks rule, generated rows see all."""
    for fa in (True, False):
        check_extend_batch([0], [60], 8, 3, [25], fa)  # whole sequence, boundary past W + k
        check_extend_batch([0], [60], 8, 3, [5], fa)  # boundary inside the first window
        check_extend_batch([0], [60], 8, 3, [9], fa)  # boundary among the partial-sink rows
        check_extend_batch([30], [20], 8, 3, [35], fa)  # a chunk over a cached prefix, crossing it
        check_extend_batch([40], [20], 8, 3, [35], fa)  # a chunk of generated rows only
        check_extend_batch([40, 7, 0, 12], [20, 1, 30, 1], 8, 0, [35, 7, NO_OUTPUT, 3], fa)  # with decode rows


def test_generated_rows_plan_only_when_present():
    """The common case costs what it did: without generated rows the extra pass is the prompt plan
    and there is no generated pass; a mixed batch's decode rows stay in the extra pass."""
    p, e, w, k = torch.tensor([0, 30, 5]), torch.tensor([100, 40, 1]), 16, 4
    plain = plan_extra(p, e, w, k)
    for no_output in (p + e, torch.full_like(p, NO_OUTPUT)):
        same = plan_extra(p, e, w, k, no_output)
        for a, b in zip(vars(plain.segments).values(), vars(same.segments).values()):
            assert torch.equal(a, b)
        assert torch.equal(plain.merge_mask, same.merge_mask)
        assert plan_generated(p, e, w, no_output) is None
    decode_rows = torch.tensor([NO_OUTPUT, NO_OUTPUT, 3])  # the one-row extend of request 2 is generated
    assert plan_generated(p, e, w, decode_rows) is None
    mixed = plan_extra(p, e, w, k, decode_rows)
    assert mixed.segments.num_segments == plain.segments.num_segments
    assert not plain.merge_mask[-1] and not mixed.merge_mask[-1]  # position 5 < W: nothing outside


def test_a_generated_run_is_one_causal_segment():
    """The cost model of a retracted request: one causal segment for its whole generated run."""
    w, k, prompt, n = 64, 10, 1000, 3000
    gen = plan_generated(torch.tensor([0]), torch.tensor([n]), w, torch.tensor([prompt]))
    assert gen.segments.num_segments == 1
    assert gen.rows.tolist() == list(range(prompt, n))
    assert int(gen.segments.kv_indptr[-1]) == n - w
    extra = plan_extra(torch.tensor([0]), torch.tensor([n]), w, k, torch.tensor([prompt]))
    assert extra.segments.num_segments == 1 + (k - 1) + 1 + 1  # head, partial rows, tail, generated (dummy)
    assert int(extra.merge_mask.sum()) == prompt - w


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


def test_backend_plans_the_fa_pass_for_batches_with_generated_rows(monkeypatch):
    """The backend reads each extend batch's prompt lengths, plans the FA decode pass only when a row
    lies past its request's prompt, and refuses an extend batch that arrives unmarked."""
    import types

    import pytest
    from sglang.srt.layers.attention.flashinfer_backend import FlashInferAttnBackend
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from attention_backends.backend import KVPool, SWAAFlashInferBackend

    monkeypatch.setattr(FlashInferAttnBackend, "init_forward_metadata", lambda self, forward_batch: None)

    class RecordedPlan:
        def __init__(self):
            self.prompt_lens = []

        def plan(self, prefix, extend, req_to_token, req_pool_indices, generated_from_cpu=None, slot_map=None):
            self.prompt_lens.append(None if generated_from_cpu is None else generated_from_cpu.tolist())

    backend = SWAAFlashInferBackend.__new__(SWAAFlashInferBackend)
    backend.prefill, backend.prefill_fa = {KVPool.FULL: RecordedPlan()}, RecordedPlan()
    backend.eager_decode, backend.swa_pool_layers, backend._to_swa = {}, frozenset(), None
    backend.req_to_token_pool = types.SimpleNamespace(req_to_token=torch.zeros(4, 256, dtype=torch.int32))

    def batch(mode, prefix, extend, prompt_lens=None):
        fb = types.SimpleNamespace(forward_mode=mode, extend_prefix_lens_cpu=prefix, extend_seq_lens_cpu=extend,
                                   req_pool_indices=torch.arange(len(prefix)), batch_size=len(prefix))
        if prompt_lens is not None:
            fb.swaa_generated_from = torch.tensor(prompt_lens)
        return fb

    backend.init_forward_metadata(batch(ForwardMode.EXTEND, [0, 10], [50, 5], [50, 100]))  # prompts only
    assert not backend.prefill_fa_planned and backend.prefill_fa.prompt_lens == []
    backend.init_forward_metadata(batch(ForwardMode.EXTEND, [0], [80], [30]))  # a retracted request again
    assert backend.prefill_fa_planned and backend.prefill_fa.prompt_lens == [[30]]
    backend.init_forward_metadata(batch(ForwardMode.MIXED, [0, 40], [20, 1], [60, 40]))  # a decode row folded in
    assert backend.prefill_fa_planned and backend.prefill_fa.prompt_lens[-1] == [60, 40]
    assert backend.generated_from.tolist() == [60, 40]
    assert backend.prefill[KVPool.FULL].prompt_lens == [None, None, None]  # the prompt-rule plan, every batch
    with pytest.raises(RuntimeError, match="without its requests' prompt lengths marked"):
        backend.init_forward_metadata(batch(ForwardMode.EXTEND, [0], [8]))
    with pytest.raises(RuntimeError, match="do not match its rows"):
        backend.init_forward_metadata(batch(ForwardMode.EXTEND, [0], [8], [8, 9]))
    backend.init_forward_metadata(batch(ForwardMode.DECODE, [0], [1]))  # decode: every row generated, no mark
    assert not backend.prefill_fa_planned and backend.generated_from is None
