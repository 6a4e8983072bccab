"""FlashInfer execution of sliding layers against the float64 reference (GPU host).

Random batches over a shuffled paged pool: prefill, chunked prefill over a
cached prefix, mixed batches with decode rows, generated rows recomputed after a
retraction (extends straddling the prompt end), and decode; relative error must
stay within bf16 tolerance. The fused Triton sink kernel is checked for any
number of sinks against its float64 reference.
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
    decode = decode.cuda() if isinstance(decode, torch.Tensor) else decode
    return swaa_attention(q.double(), k, v, cfg, 0, q_pos, k_pos, decode=decode, scale=scale)


NO_OUTPUT = 10**9  # a prompt length past every position: no generated row


def _prompt_len(rng: random.Random, p: int, e: int) -> int:
    """Where a request's prompt ends relative to this extend [p, p + e)."""
    kind = rng.choice(["prompt", "prompt", "straddle", "generated", "at_end"])
    if kind == "prompt":
        return NO_OUTPUT
    if kind == "straddle":
        return p + rng.randint(0, e - 1)
    if kind == "generated":
        return rng.randint(0, p)
    return p + e


def extend_case(seed: int, heads: tuple[int, int, int], w: int, k: int, prefix: list[int], extend: list[int],
                prompt_lens: list[int], fa: bool, sinks: str = "flashinfer") -> float:
    """One batch through SlidingPrefill, planned as the backend plans it, against the float64 rule."""
    from attention_backends.flashinfer_ops import SlidingPrefill

    hq, hk, d = heads
    seq_lens = [p + e for p, e in zip(prefix, extend)]
    g, pool, r2t, rpi, heads_cfg, ws = _setup(seed, hq, hk, d, seq_lens)
    op = SlidingPrefill(ws, heads_cfg, w, k, sinks=sinks)
    # the backend gives the prompt lengths to the plan of layers with FA decode only
    op.plan(torch.tensor(prefix), torch.tensor(extend), r2t, rpi, torch.tensor(prompt_lens) if fa else None)
    q = torch.randn(sum(extend), hq, d, device="cuda", generator=g).bfloat16()
    scale = d**-0.5
    out = op.run(q, pool, sm_scale=scale)
    assert torch.isfinite(out).all()
    cfg = SWAAConfig(sliding_window_size=w, keep_first=k, force_fa_decode=fa)
    refs, row = [], 0
    for b in range(len(prefix)):
        q_b = q[row : row + extend[b]]
        pos = torch.arange(prefix[b], seq_lens[b])
        refs.append(_reference(q_b, pool, r2t, rpi[b], seq_lens[b], pos, cfg, pos >= prompt_lens[b], scale))
        row += extend[b]
    return _rel_err(out, torch.cat(refs))


def random_extend_case(seed: int, rng: random.Random, sinks: str = "flashinfer") -> float:
    heads = rng.choice(HEADS)
    w = rng.choice([1, 7, 64, 200, 1024])
    k = rng.choice([0, 1, 4, 100])
    bs = rng.randint(1, 6)
    prefix = [rng.choice([0, 0, rng.randint(1, 1500)]) for _ in range(bs)]
    extend = [rng.randint(1, 1200) for _ in range(bs)]
    prompt_lens = [_prompt_len(rng, p, e) for p, e in zip(prefix, extend)]
    # decode rows of a mixed batch: one-row extends past the prompt
    decode_rows = [rng.random() < 0.2 for _ in range(bs)]
    extend = [1 if dr else e for e, dr in zip(extend, decode_rows)]
    prompt_lens = [min(g, p) if dr else g for g, p, dr in zip(prompt_lens, prefix, decode_rows)]
    return extend_case(seed, heads, w, k, prefix, extend, prompt_lens, rng.random() < 0.5, sinks)


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


@pytest.mark.parametrize("sinks", ["flashinfer", "fused"])
def test_generated_rows_straddling_the_prompt_end(cuda, sinks):
    """A retracted request prefilled again next to prompt chunks and decode rows: on a layer with
    FA decode its generated rows see everything, its prompt rows sinks + window; also chunked
    over a cached prefix. Without FA decode every row keeps the prompt rule."""
    cases = [
        # (w, k, prefix, extend, prompt lengths)
        (64, 4, [0], [900], [300]),
        (64, 4, [0, 500, 0], [900, 300, 1], [300, 620, 0]),
        (200, 100, [700, 0, 40], [600, 1000, 1], [900, NO_OUTPUT, 10]),
        (7, 1, [1200, 0], [50, 1100], [1210, 3]),
        (1024, 100, [0, 2000], [3000, 500], [1500, 1000]),
    ]
    errors = []
    for i, (w, k, prefix, extend, prompt_lens) in enumerate(cases):
        for fa in (True, False):
            for heads in HEADS[:2]:
                errors.append(extend_case(500 + i, heads, w, k, prefix, extend, prompt_lens, fa, sinks))
    print(f"straddling ({sinks} sinks): {len(errors)} cases, max rel err {max(errors):.2e}")
    assert max(errors) < 1e-2


def test_prompt_rule_on_generated_rows_is_caught(cuda):
    """Guard: planning generated rows with the prompt rule must fail the FA decode reference."""
    w, k, prefix, extend, prompt_lens = 64, 4, [0], [900], [300]
    seq_lens = [900]
    g, pool, r2t, rpi, heads_cfg, ws = _setup(9, 8, 2, 64, seq_lens)
    from attention_backends.flashinfer_ops import SlidingPrefill

    op = SlidingPrefill(ws, heads_cfg, w, k)
    op.plan(torch.tensor(prefix), torch.tensor(extend), r2t, rpi)  # no prompt lengths: all prompt rule
    q = torch.randn(900, 8, 64, device="cuda", generator=g).bfloat16()
    out = op.run(q, pool, sm_scale=0.125)
    pos = torch.arange(900)
    cfg = SWAAConfig(sliding_window_size=w, keep_first=k, force_fa_decode=True)
    ref = _reference(q, pool, r2t, rpi[0], 900, pos, cfg, pos >= prompt_lens[0], 0.125)
    assert _rel_err(out, ref) > 0.05


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


@pytest.fixture(scope="module")
def triton_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("triton", reason="the fused sink kernel is written in Triton, which is not installed here")


@pytest.mark.parametrize("keep_first", [1, 100, 256, 1000, 4096])
def test_fused_sink_kernel_any_number_of_sinks(triton_cuda, keep_first):
    """The Triton sink + merge kernel against its float64 reference, one tile of sinks or many.

    Request 0 runs from position 0 (rows with no sink, every partial row, then all sinks),
    request 1 sees all sinks, request 2 a few; head shapes with GQA groups 4, 7 and 1.
    """
    from attention_backends.sink_merge import row_blocks, sink_limits, sink_merge, sink_merge_reference

    w, k = 16, keep_first
    prefix = [0, k + 3000, 7]
    extend = [w + k + 70, 130, w + 40]
    seq_lens = [p + e for p, e in zip(prefix, extend)]
    for hq, hk, d in [(8, 2, 128), (14, 2, 64), (4, 4, 128)]:
        g = torch.Generator(device="cuda").manual_seed(k * 31 + hq)
        n_slots = sum(seq_lens) + 64
        k_pool = torch.randn(n_slots, hk, d, device="cuda", generator=g).bfloat16()
        v_pool = torch.randn(n_slots, hk, d, device="cuda", generator=g).bfloat16()
        sink_slots = torch.stack(  # k distinct slots per request, slot 0 unused like SGLang
            [torch.randperm(n_slots - 1, device="cuda", generator=g)[:k] + 1 for _ in range(3)]
        ).int()
        n = sum(extend)
        q = torch.randn(n, hq, d, device="cuda", generator=g).bfloat16()
        limits = sink_limits(torch.tensor(prefix), torch.tensor(extend), w, k)
        # a window pass's output and lse (base 2), weighted like the sinks so both sides matter
        o = torch.randn(n, hq, d, device="cuda", generator=g).bfloat16()
        lse = (torch.log2(limits.cuda().float() + 1)[:, None] + torch.randn(n, hq, device="cuda", generator=g)).float()
        o_ref, lse_ref = o.double(), lse.double()
        row_req = torch.repeat_interleave(torch.arange(3), torch.tensor(extend)).cuda()
        sink_merge_reference(q.double(), k_pool.double(), v_pool.double(), o_ref, lse_ref, sink_slots, row_req,
                             limits.cuda(), d**-0.5)
        o_before, lse_before = o.clone(), lse.clone()
        sink_merge(q, k_pool, v_pool, o, lse, sink_slots, row_blocks(torch.tensor(extend), 64).cuda(),
                   limits.cuda(), d**-0.5)
        untouched = limits.cuda() == 0
        assert torch.equal(o[untouched], o_before[untouched]) and torch.equal(lse[untouched], lse_before[untouched])
        merged = ~untouched
        err = _rel_err(o[merged], o_ref[merged])
        lse_err = float((lse[merged].double() - lse_ref[merged]).abs().max())
        noop_err = _rel_err(o_before[merged], o_ref[merged])  # what a kernel that merged nothing would score
        print(f"fused sinks k={k} heads=({hq},{hk},{d}): rel err {err:.2e}, lse max abs err {lse_err:.2e}, "
              f"no-op would be {noop_err:.2e}")
        assert err < 1e-2 and lse_err < 1e-3
        assert noop_err > 0.1
