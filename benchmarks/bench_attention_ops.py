"""Attention-op benchmark: a SWAA sliding layer against FlashInfer full attention (GPU).

Prefill: one sequence of N tokens, timed for full causal, window only
(``window_left = W - 1``) and SWAA (window + sinks, two passes merged), as run by
``attention_backends.flashinfer_ops``. Decode: B requests of C context, full
attention against the ``sinks ++ window`` index list. Plans are built once and
only ``run`` is timed (plan once per batch, run per layer). Prints a table and
writes JSON.

    python benchmarks/bench_attention_ops.py --out benchmarks/results/ops.json
    python benchmarks/bench_attention_ops.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date

import torch


def _time_ms(fn, warmup: int = 3, reps: int = 20) -> float:
    """Median over 5 rounds of ``reps`` back-to-back calls between two CUDA events, per call.

    Back to back, the host queues the next launch while the GPU runs the current one,
    as in a served forward pass (and in decode CUDA graphs): the figure is GPU time,
    not Python launch latency, which dominates a single sub-0.1 ms call.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def _pool(n: int, hk: int, d: int):
    k = torch.randn(n + 1, hk, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(n + 1, hk, d, device="cuda", dtype=torch.bfloat16)
    return k, v


def bench_prefill(n: int, w: int, sinks: int, hq: int, hk: int, d: int, workspace, backend: str = "fa2") -> dict:
    import flashinfer

    from attention_backends.flashinfer_ops import HeadConfig, SlidingPrefill

    heads = HeadConfig(hq, hk, d, torch.bfloat16, torch.bfloat16)
    pool = _pool(n, hk, d)
    req_to_token = torch.arange(1, n + 1, dtype=torch.int32, device="cuda").view(1, n)
    rpi = torch.zeros(1, dtype=torch.int64, device="cuda")
    q = torch.randn(n, hq, d, device="cuda", dtype=torch.bfloat16)
    scale = d**-0.5
    indptr = torch.tensor([0, n], dtype=torch.int32)
    ones = torch.ones(1, dtype=torch.int32, device="cuda")

    def plain(window_left: int):
        wr = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend=backend)
        wr.plan(torch.tensor([0, n], dtype=torch.int32), indptr, req_to_token[0], ones, hq, hk, d, 1,
                causal=True, window_left=window_left, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
        return lambda: wr.forward(q, pool, causal=True, window_left=window_left, sm_scale=scale)

    full_ms = _time_ms(plain(-1), reps=3 if n > 65536 else 20)
    window_ms = _time_ms(plain(w - 1))
    op = SlidingPrefill(workspace, heads, w, sinks, backend=backend)
    op.plan(torch.tensor([0]), torch.tensor([n]), req_to_token, rpi)
    swaa_ms = _time_ms(lambda: op.run(q, pool, sm_scale=scale))
    # components: the extra pass alone, and the merge alone
    extra_ms = _time_ms(lambda: op.extra_wrapper.forward_return_lse(q, pool, causal=False, sm_scale=scale))
    o, lse = op.window_wrapper.forward_return_lse(q, pool, causal=True, window_left=w - 1, sm_scale=scale)
    o2, lse2 = op.extra_wrapper.forward_return_lse(q, pool, causal=False, sm_scale=scale)
    from flashinfer.cascade import merge_state_in_place

    merge_ms = _time_ms(lambda: merge_state_in_place(o, lse, o2, lse2, mask=op.merge_mask))
    t0 = time.perf_counter()
    for _ in range(10):
        op.plan(torch.tensor([0]), torch.tensor([n]), req_to_token, rpi)
    torch.cuda.synchronize()
    plan_ms = (time.perf_counter() - t0) * 100
    fused = SlidingPrefill(workspace, heads, w, sinks, backend=backend, sinks="fused")
    fused.plan(torch.tensor([0]), torch.tensor([n]), req_to_token, rpi)
    fused_ms = _time_ms(lambda: fused.run(q, pool, sm_scale=scale))
    return {"kind": "prefill", "backend": backend, "tokens": n, "extra_ms": extra_ms, "merge_ms": merge_ms,
            "swaa_fused_ms": fused_ms, "fused_over_window": fused_ms / window_ms, "window": w, "sinks": sinks, "full_ms": full_ms, "window_ms": window_ms,
            "swaa_ms": swaa_ms, "swaa_over_window": swaa_ms / window_ms, "full_over_swaa": full_ms / swaa_ms,
            "plan_ms": plan_ms}


def bench_decode(batch: int, ctx: int, w: int, sinks: int, hq: int, hk: int, d: int, workspace) -> dict:
    import flashinfer

    from attention_backends.flashinfer_ops import HeadConfig, SlidingDecode

    heads = HeadConfig(hq, hk, d, torch.bfloat16, torch.bfloat16)
    pool = _pool(batch * ctx, hk, d)
    req_to_token = torch.arange(1, batch * ctx + 1, dtype=torch.int32, device="cuda").view(batch, ctx)
    rpi = torch.arange(batch, device="cuda")
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    scale = d**-0.5
    full = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
    full.plan(torch.arange(batch + 1, dtype=torch.int32) * ctx, req_to_token.flatten(),
              torch.ones(batch, dtype=torch.int32, device="cuda"), hq, hk, d, 1,
              data_type=torch.bfloat16, q_data_type=torch.bfloat16)
    full_ms = _time_ms(lambda: full.forward(q, pool, sm_scale=scale), reps=50)
    swaa = {}
    for tc in (True, False):
        op = SlidingDecode(SlidingDecode.make_wrapper(workspace, use_tensor_cores=tc), heads, w, sinks)
        op.plan(torch.full((batch,), ctx), req_to_token, rpi)
        swaa[tc] = _time_ms(lambda: op.run(q, pool, sm_scale=scale), reps=50)
    swaa_ms = min(swaa.values())
    return {"kind": "decode", "batch": batch, "context": ctx, "window": w, "sinks": sinks, "full_ms": full_ms,
            "swaa_ms": swaa_ms, "swaa_tensor_core_ms": swaa[True], "swaa_cuda_core_ms": swaa[False],
            "full_over_swaa": full_ms / swaa_ms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--window", type=int, default=2048, help="sliding_window_size W of the layer timed")
    p.add_argument("--sinks", type=int, default=100, help="keep_first k (sink tokens) of the layer timed")
    p.add_argument("--heads", default="32,8,128", help="q heads, kv heads, head dim")
    p.add_argument("--lengths", default="8192,32768,65536,131072", help="prefill lengths")
    p.add_argument("--decode", default="32x32768,8x131072", help="decode batch x context")
    p.add_argument("--quick", action="store_true", help="8K and 32K prefill, one decode shape")
    p.add_argument("--backends", default="fa2", help="FlashInfer prefill backends to compare, e.g. fa2,fa3")
    p.add_argument("--out", help="write JSON here")
    a = p.parse_args()
    hq, hk, d = (int(x) for x in a.heads.split(","))
    lengths = [8192, 32768] if a.quick else [int(x) for x in a.lengths.split(",")]
    decodes = ["32x32768"] if a.quick else a.decode.split(",")
    workspace = torch.empty(512 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    rows = []
    try:
        from tqdm import tqdm
    except ImportError:  # progress is optional
        def tqdm(x, **_):
            return x
    for backend in a.backends.split(","):
        for n in tqdm(lengths, desc=f"prefill {backend}"):
            rows.append(bench_prefill(n, a.window, a.sinks, hq, hk, d, workspace, backend))
    for spec in tqdm(decodes, desc="decode"):
        b, c = (int(x) for x in spec.split("x"))
        rows.append(bench_decode(b, c, a.window, a.sinks, hq, hk, d, workspace))
    import flashinfer

    meta = {"gpu": torch.cuda.get_device_name(), "date": date.today().isoformat(), "torch": torch.__version__,
            "flashinfer": flashinfer.__version__, "heads": [hq, hk, d], "python": platform.python_version()}
    print(f"\n{meta['gpu']}, {meta['date']}, flashinfer {meta['flashinfer']}, heads {hq}/{hk}x{d}, "
          f"W={a.window}, sinks={a.sinks}")
    print(f"{'op':12} {'shape':>12} {'full ms':>9} {'window ms':>10} {'swaa ms':>9} {'extra':>7} {'merge':>7} "
          f"{'swaa/win':>9} {'full/swaa':>10} {'fused ms':>9} {'fused/win':>9}")
    for r in rows:
        shape = str(r["tokens"]) if r["kind"] == "prefill" else f"{r['batch']}x{r['context']}"
        op = f"prefill/{r['backend']}" if r["kind"] == "prefill" else "decode"
        f = lambda key: f"{r[key]:.3f}" if key in r else "-"  # noqa: E731
        print(f"{op:12} {shape:>12} {r['full_ms']:9.3f} {f('window_ms'):>10} {r['swaa_ms']:9.3f} {f('extra_ms'):>7} "
              f"{f('merge_ms'):>7} {f('swaa_over_window'):>9} {r['full_over_swaa']:10.1f} {f('swaa_fused_ms'):>9} "
              f"{f('fused_over_window'):>9}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
