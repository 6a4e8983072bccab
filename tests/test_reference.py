"""The visibility rule and reference attention, against brute force."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swaa_sglang import SWAAConfig, masked_attention, swaa_attention, visibility_mask


def brute_visible(i: int, j: int, w: int | None, k: int, full_layer: bool, fa_decode_row: bool) -> bool:
    """The contract of SWAA.md, literally, one pair at a time."""
    if j > i:
        return False
    if w is None or full_layer or fa_decode_row:
        return True
    return i - j < w or j < k


configs = st.builds(
    SWAAConfig,
    sliding_window_size=st.one_of(st.none(), st.integers(1, 40)),
    keep_first=st.integers(0, 50),
    force_fa_decode=st.one_of(st.booleans(), st.lists(st.integers(0, 5), unique=True)),
    non_sliding_layers=st.lists(st.integers(0, 5), unique=True),
)


@settings(max_examples=300, deadline=None)
@given(config=configs, layer=st.integers(0, 5), n=st.integers(1, 60), data=st.data())
def test_mask_matches_brute_force(config, layer, n, data):
    decode = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    positions = torch.arange(n)
    mask = visibility_mask(config, layer, positions, positions, torch.tensor(decode))
    fa = config.uses_fa_decode(layer)
    for i in range(n):
        for j in range(n):
            expected = brute_visible(
                i, j, config.sliding_window_size, config.keep_first, not config.is_sliding(layer), decode[i] and fa
            )
            assert bool(mask[i, j]) == expected, (i, j, config, layer)


@settings(max_examples=100, deadline=None)
@given(
    w=st.integers(1, 20),
    k=st.integers(0, 30),
    start=st.integers(0, 40),
    nq=st.integers(1, 10),
)
def test_mask_uses_absolute_positions(w, k, start, nq):
    """A chunk of queries at positions [start, start+nq) over all earlier keys: sinks keep their positions."""
    config = SWAAConfig(sliding_window_size=w, keep_first=k)
    q_pos = torch.arange(start, start + nq)
    k_pos = torch.arange(start + nq)
    mask = visibility_mask(config, 0, q_pos, k_pos)
    for a, i in enumerate(q_pos.tolist()):
        seen = set(torch.nonzero(mask[a]).flatten().tolist())
        assert seen == {j for j in range(i + 1) if i - j < w or j < k}


def test_edge_cases():
    pos = torch.arange(6)
    # W = 1: only itself, plus sinks
    m = visibility_mask(SWAAConfig(sliding_window_size=1, keep_first=2), 0, pos, pos)
    assert m[5].tolist() == [True, True, False, False, False, True]
    # k >= W and k >= length: every earlier key is a sink, so the mask is causal
    m = visibility_mask(SWAAConfig(sliding_window_size=2, keep_first=10), 0, pos, pos)
    assert torch.equal(m, torch.tril(torch.ones(6, 6, dtype=torch.bool)))
    # the decode flag only matters with FA decode on that layer
    cfg = SWAAConfig(sliding_window_size=2, force_fa_decode=[1])
    assert visibility_mask(cfg, 1, pos[-1:], pos, decode=True).all()
    assert visibility_mask(cfg, 0, pos[-1:], pos, decode=True).tolist() == [[False] * 4 + [True] * 2]
    assert visibility_mask(cfg, 1, pos[-1:], pos, decode=False).sum() == 2


def naive_attention(q, k, v, visible, scale):
    """Loop over queries and heads in float64: the definition of softmax attention."""
    nq, hq, d = q.shape
    group = hq // k.shape[1]
    out = torch.zeros(nq, hq, v.shape[-1], dtype=torch.float64)
    for a in range(nq):
        for h in range(hq):
            keys = [b for b in range(k.shape[0]) if visible(a, b)]
            if not keys:
                continue
            s = torch.stack([(q[a, h].double() * k[b, h // group].double()).sum() * scale for b in keys])
            p = torch.softmax(s, dim=0)
            out[a, h] = sum(p[t] * v[b, h // group].double() for t, b in enumerate(keys))
    return out


def test_reference_attention_matches_naive_loop_with_gqa():
    g = torch.Generator().manual_seed(0)
    n, hq, hk, d = 23, 6, 2, 8
    q, k, v = (torch.randn(n, h, d, generator=g) for h in (hq, hk, hk))
    cfg = SWAAConfig(sliding_window_size=5, keep_first=3)
    pos = torch.arange(n)
    out = swaa_attention(q, k, v, cfg, 0, pos, pos)
    assert out.dtype == torch.float32
    ref = naive_attention(q, k, v, lambda a, b: b <= a and (a - b < 5 or b < 3), 1 / math.sqrt(d))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # and the windowed output really differs from full causal attention for late queries
    full = swaa_attention(q, k, v, SWAAConfig(), 0, pos, pos)
    assert (out[10:] - full[10:]).abs().max() > 1e-3
    torch.testing.assert_close(out[:5], full[:5])


def test_reference_promotes_dtype_and_reports_lse():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(4, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[True, False, False, False]] * 3 + [[False] * 4])
    q = q.half().double()  # values exactly representable in fp16, computed in float64
    out, lse = masked_attention(q, k, v, mask, scale=0.5)
    assert out.dtype == torch.float64
    # one visible key: output is that key's value, lse is its score in base 2
    torch.testing.assert_close(out[0], v[0])
    torch.testing.assert_close(lse[0], (q[0] * k[0]).sum(-1) * 0.5 / math.log(2))
    # a query that sees nothing: zeros and -inf, no NaN
    assert torch.equal(out[3], torch.zeros_like(out[3]))
    assert torch.isneginf(lse[3]).all()
    bf = masked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)[0]
    assert bf.dtype == torch.float32
