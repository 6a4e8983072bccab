"""FlashInfer execution of sliding layers against the float64 reference (GPU host).

Random batches over a shuffled paged pool: prefill, chunked prefill over a
cached prefix, mixed batches with generated rows, and decode; relative error
must stay within bf16 tolerance.
"""

from __future__ import annotations

import random

import pytest
import torch

from swaa_sglang import SWAAConfig, swaa_attention

pytestmark = pytest.mark.gpu

HEADS = [(8, 2, 64), (32, 8, 128), (4, 4, 128)]  # (q heads, kv heads, head dim)


def _setup(seed: int, hq: int, hk: int, d: int, seq_lens: list[int]):
    from attention_backends.flashinfer_ops import HeadConfig

    g = torch.Generator(device="cuda").manual_seed(seed)
    n_slots = sum(seq_lens) + 64
    k_pool = torch.randn(n_slots, hk, d, device="cuda", generator=g).bfloat16()
    v_pool = torch.randn(n_slots, hk, d, device="cuda", generator=g).bfloat16()
    perm = torch.randperm(n_slots - 1, device="cuda", generator=g) + 1  # slot 0 unused, like SGLang
    req_to_token = torch.zeros(len(seq_lens) + 2, max(seq_lens) + 8, dtype=torch.int32, device="cuda")
    req_pool_indices = torch.randperm(len(seq_lens) + 2, device="cuda", generator=g)[: len(seq_lens)]
    used = 0
    for b, L in enumerate(seq_lens):
        req_to_token[req_pool_indices[b], :L] = perm[used : used + L].int()
        used += L
    heads = HeadConfig(hq, hk, d, torch.bfloat16, torch.bfloat16)
    workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    return g, (k_pool, v_pool), req_to_token, req_pool_indices, heads, workspace


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def _reference(q, pool, req_to_token, req_pool_index, L, q_pos, cfg, decode, scale):
    """float64 on the GPU (same math as on the CPU; the CPU suite checks the reference itself)."""
    slots = req_to_token[req_pool_index, :L].long()
    k, v = pool[0][slots].double(), pool[1][slots].double()
    q_pos, k_pos = q_pos.cuda(), torch.arange(L, device="cuda")
    return swaa_attention(q.double(), k, v, cfg, 0, q_pos, k_pos, decode=decode, scale=scale)


def random_extend_case(seed: int, rng: random.Random, sinks: str = "flashinfer") -> float:
    from attention_backends.flashinfer_ops import SlidingPrefill

    hq, hk, d = rng.choice(HEADS)
    w = rng.choice([1, 7, 64, 200, 1024])
    k = rng.choice([0, 1, 4, 100])
    bs = rng.randint(1, 6)
    prefix = [rng.choice([0, 0, rng.randint(1, 1500)]) for _ in range(bs)]
    extend = [rng.randint(1, 1200) for _ in range(bs)]
    fa = rng.random() < 0.5
    decode_rows = [rng.random() < 0.3 for _ in range(bs)]
    extend = [1 if dr else e for e, dr in zip(extend, decode_rows)]
    seq_lens = [p + e for p, e in zip(prefix, extend)]
    g, pool, r2t, rpi, heads, ws = _setup(seed, hq, hk, d, seq_lens)
    op = SlidingPrefill(ws, heads, w, k, sinks=sinks)
    full_rows = torch.tensor(decode_rows) & fa
    op.plan(torch.tensor(prefix), torch.tensor(extend), r2t, rpi, full_rows)
    q = torch.randn(sum(extend), hq, d, device="cuda", generator=g).bfloat16()
    scale = d**-0.5
    out = op.run(q, pool, sm_scale=scale)
    assert torch.isfinite(out).all()
    cfg = SWAAConfig(sliding_window_size=w, keep_first=k, force_fa_decode=fa)
    refs, row = [], 0
    for b in range(bs):
        q_b = q[row : row + extend[b]]
        pos = torch.arange(prefix[b], seq_lens[b])
        refs.append(_reference(q_b, pool, r2t, rpi[b], seq_lens[b], pos, cfg, decode_rows[b], scale))
        row += extend[b]
    return _rel_err(out, torch.cat(refs))


def random_decode_case(seed: int, rng: random.Random) -> float:
    from attention_backends.flashinfer_ops import SlidingDecode

    hq, hk, d = rng.choice(HEADS)
    w = rng.choice([1, 16, 256, 2048])
    k = rng.choice([0, 4, 100])
    seq_lens = [rng.randint(1, 5000) for _ in range(rng.randint(1, 16))]
    g, pool, r2t, rpi, heads, ws = _setup(seed, hq, hk, d, seq_lens)
    op = SlidingDecode(SlidingDecode.make_wrapper(ws), heads, w, k)
    op.plan(torch.tensor(seq_lens), r2t, rpi)
    q = torch.randn(len(seq_lens), hq, d, device="cuda", generator=g).bfloat16()
    scale = d**-0.5
    out = op.run(q, pool, sm_scale=scale)
    cfg = SWAAConfig(sliding_window_size=w, keep_first=k)
    refs = [
        _reference(q[b : b + 1], pool, r2t, rpi[b], L, torch.tensor([L - 1]), cfg, True, scale)
        for b, L in enumerate(seq_lens)
    ]
    return _rel_err(out, torch.cat(refs))


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("flashinfer")


@pytest.mark.parametrize("sinks", ["flashinfer", "fused"])
def test_extend_random_cases(cuda, sinks):
    rng = random.Random(0)
    errors = [random_extend_case(i, rng, sinks) for i in range(150)]
    print(f"extend ({sinks} sinks): {len(errors)} cases, max rel err {max(errors):.2e}, "
          f"mean {sum(errors) / len(errors):.2e}")
    assert max(errors) < 1e-2


def test_decode_random_cases(cuda):
    rng = random.Random(1)
    errors = [random_decode_case(1000 + i, rng) for i in range(150)]
    print(f"decode: {len(errors)} cases, max rel err {max(errors):.2e}, mean {sum(errors) / len(errors):.2e}")
    assert max(errors) < 1e-2


def test_reference_is_sensitive_to_the_window(cuda):
    """Guard against a vacuous comparison: a full-attention result must fail the windowed check."""
    from attention_backends.flashinfer_ops import SlidingPrefill

    g, pool, r2t, rpi, heads, ws = _setup(7, 8, 2, 64, [3000])
    q = torch.randn(3000, 8, 64, device="cuda", generator=g).bfloat16()
    op = SlidingPrefill(ws, heads, 10**6, 0)  # window longer than the sequence: full causal attention
    op.plan(torch.tensor([0]), torch.tensor([3000]), r2t, rpi)
    full = op.run(q, pool, sm_scale=0.125)
    ref = _reference(q, pool, r2t, rpi[0], 3000, torch.arange(3000), SWAAConfig(sliding_window_size=64, keep_first=4), False, 0.125)
    assert _rel_err(full, ref) > 0.1
