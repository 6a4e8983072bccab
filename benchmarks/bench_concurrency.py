"""Concurrency benchmark: many long requests at once, vanilla SGLang against SWAA with window eviction (GPU).

For each setting one ``sglang.Engine`` (dummy weights, default Qwen3-4B-Instruct-2507
shape), after one warm-up request, gets ``--requests`` requests of ``--prompt-len`` tokens
and ``--output-len`` new tokens, all submitted at once and streamed. ``--requests 32,104``
runs two such phases on the same engine (fresh prompts, cache flushed between), so a
throughput run and a capacity run share one engine start and one set of kernel compiles.
Per request it records when the first and the last token arrived; from those it reports

* the peak number of requests decoding at the same time (observed concurrency: how many
  long requests the KV pool admitted together; bounded by the phase's request count, so
  submit more than the pool holds to measure the pool's limit),
* output tokens/s over the whole phase, and over the finished requests only (their tokens
  up to the last one finishing: the rate a time-limited run sustained on completed work),
* the KV pool size (``max_total_num_tokens``, and the SWA pool where there is one),
* every ``--sample-every`` seconds, the scheduler's own load snapshot (what ``/v1/loads``
  serves: running and waiting requests, tokens in use, prompt tokens prefilled so far), so a
  run that stalls or thrashes shows how: retracted requests are prefilled again, so prefilled
  tokens per submitted prompt token rise above 1 (SGLang's own retraction figure in that
  snapshot is filled only with ``--enable-metrics`` and holds the last event, not a count).

A run that passes ``--time-limit`` stops waiting there (marked ``partial``) and counts every
token streamed until then, finished request or not, so a slow baseline still yields a rate
inside a device-time budget.

    python benchmarks/bench_concurrency.py --settings vanilla,sink100-2k+evict --out conc.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

from common import add_engine_args, make_parser, measure_settings, parse_positive_ints, parse_settings, run_meta, start_engine


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """Largest number of ``[start, end)`` intervals that overlap at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


async def _one(engine, ids: list[int], out_len: int, t0: float, row: dict) -> None:
    """Stream one request, updating ``row`` as tokens arrive (a request cut off by the time limit
    still counts the tokens it produced)."""
    params = {"temperature": 0, "max_new_tokens": out_len, "ignore_eos": True}
    async for chunk in await engine.async_generate(input_ids=ids, sampling_params=params, stream=True):
        now = time.perf_counter() - t0
        if row["first_token_s"] is None:
            row["first_token_s"] = now
        row["last_token_s"] = now
        row["output_tokens"] = chunk.get("meta_info", {}).get("completion_tokens", row["output_tokens"] + 1)
    row["finished"] = True


LOAD_KEYS = ("num_running_reqs", "num_waiting_reqs", "num_used_tokens", "token_usage", "total_prefill_uncached_tokens")


async def _snapshot(engine, t0: float, samples: list[dict]) -> None:
    """Append the scheduler's load snapshot (SGLang's ``/v1/loads`` source)."""
    for snap in await engine.tokenizer_manager.get_loads(include=["core"]):
        d = snap.to_dict({"core"})
        samples.append({"t": round(time.perf_counter() - t0, 2), **{k: d.get(k) for k in LOAD_KEYS}})


async def _sample_loads(engine, t0: float, every: float, samples: list[dict]) -> None:
    """A snapshot every ``every`` s until cancelled."""
    while True:
        await _snapshot(engine, t0, samples)
        await asyncio.sleep(every)


async def _drive(engine, prompts, out_len: int, time_limit: float | None, progress,
                 sample_every: float = 0.0, samples: list | None = None) -> tuple[list[dict], float, bool]:
    """Submit every prompt at once; return one row per request (finished or not), the elapsed
    seconds and whether the time limit cut the run short. With ``sample_every`` > 0 the
    scheduler's load is sampled into ``samples`` meanwhile."""
    t0 = time.perf_counter()
    rows = [{"first_token_s": None, "last_token_s": None, "output_tokens": 0, "finished": False} for _ in prompts]
    sampler = asyncio.ensure_future(_sample_loads(engine, t0, sample_every, samples)) if sample_every > 0 else None
    pending = {asyncio.ensure_future(_one(engine, p, out_len, t0, r)) for p, r in zip(prompts, rows)}
    deadline = None if time_limit is None else t0 + time_limit
    while pending:
        timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
        done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:  # the time limit passed
            break
        for d in done:
            d.result()  # a failed request fails the benchmark
            progress(1)
    elapsed = time.perf_counter() - t0
    for t in pending | ({sampler} if sampler else set()):
        t.cancel()
    if sampler:
        # one more at the end: the last periodic one can precede the last prefill chunks (a request
        # being chunk-prefilled is neither running nor waiting)
        await _snapshot(engine, t0, samples)
    await asyncio.gather(*pending, return_exceptions=True)  # let the cancelled streams close
    if sampler:
        await asyncio.gather(sampler, return_exceptions=True)
    return rows, elapsed, bool(pending)


def summarize(rows: list[dict], elapsed: float) -> dict:
    """Output tok/s counts every streamed token, finished or not; finished tok/s counts the finished
    requests' tokens up to the last of them finishing; peak decoding concurrency is the most requests
    between their first and last token at one instant."""
    out_tokens = sum(r["output_tokens"] for r in rows)
    done = [r for r in rows if r["finished"]]
    done_until = max((r["last_token_s"] for r in done), default=0.0)
    spans = [(r["first_token_s"], r["last_token_s"]) for r in rows if r["first_token_s"] is not None]
    return {"completed": len(done), "seconds": elapsed, "output_tokens": out_tokens,
            "output_tok_s": out_tokens / elapsed if elapsed else 0.0,
            "finished_tok_s": sum(r["output_tokens"] for r in done) / done_until if done_until else 0.0,
            "peak_concurrent_decoding": peak_overlap(spans)}


def summarize_loads(loads: list[dict], prompt_tokens: int) -> dict:
    """From the scheduler's samples: the most requests it ran at once, and how many prompt tokens it
    prefilled per prompt token submitted (above 1: work redone after retraction)."""
    if not loads:
        return {}
    prefilled = [s["total_prefill_uncached_tokens"] for s in loads if s["total_prefill_uncached_tokens"] is not None]
    return {"peak_running_reqs": max(s["num_running_reqs"] or 0 for s in loads),
            "prefill_per_prompt_token": (prefilled[-1] - prefilled[0]) / prompt_tokens if len(prefilled) > 1 else None}


def measure(setting: str, a, emit) -> None:
    """One engine for ``setting``; ``emit`` gets one result row per phase of ``a.requests`` as it ends."""
    try:
        from tqdm import tqdm
    except ImportError:  # progress is optional
        tqdm = None
    rng = random.Random(0)
    t0 = time.perf_counter()
    engine = start_engine(setting, a.model, a.context_len or a.prompt_len + a.output_len + 64, a.mem)
    startup = time.perf_counter() - t0
    try:
        info = engine.get_server_info()
        pool = {"max_total_num_tokens": info.get("max_total_num_tokens"),
                "pool_info": {k: v for k, v in info.items() if "token" in k or "swa" in k}}
        # warm-up: one full prefill chunk and a short decode, so that first-use costs (FlashInfer
        # JIT compiles of each kernel variant take minutes on a fresh host) stay out of the timing
        t_warm = time.perf_counter()
        engine.generate(input_ids=[rng.randrange(1000, 100000) for _ in range(min(a.prompt_len, 16384))],
                        sampling_params={"temperature": 0, "max_new_tokens": 16, "ignore_eos": True})
        warmup = time.perf_counter() - t_warm
        for n in a.requests:
            # each phase starts from empty pools (no hits on an earlier phase); SGLang flushes only an
            # idle scheduler, and the aborts of a time-limited phase may still be draining: wait up to 120 s
            flushed = engine.loop.run_until_complete(engine.tokenizer_manager.flush_cache(timeout_s=120))
            if not flushed.success:
                raise RuntimeError(f"{setting}: flush_cache before the x{n} phase failed: {flushed}")
            prompts = [[rng.randrange(1000, 100000) for _ in range(a.prompt_len)] for _ in range(n)]
            bar = tqdm(total=n, desc=f"{setting} x{n}") if tqdm else None
            # the Engine's own event loop: its tokenizer manager lives there
            loads: list[dict] = []
            per_request, elapsed, partial = engine.loop.run_until_complete(
                _drive(engine, prompts, a.output_len, a.time_limit, (bar.update if bar else (lambda k: None)),
                       a.sample_every, loads))
            if bar:
                bar.close()
            emit({"setting": setting, "startup_s": startup, **pool, "warmup_s": warmup, "requests": n,
                  "partial": partial, **summarize(per_request, elapsed), **summarize_loads(loads, n * a.prompt_len),
                  "loads": loads, "per_request": per_request})
    finally:
        engine.shutdown()


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    add_engine_args(p, settings="vanilla,sink100-2k+evict", mem=0.85)
    p.add_argument("--requests", default="32",
                   help="comma list: one phase per count on the same engine, e.g. 32,104 (throughput, then capacity)")
    p.add_argument("--prompt-len", type=int, default=131072)
    p.add_argument("--output-len", type=int, default=512)
    p.add_argument("--context-len", type=int, default=None,
                   help="the engine's context length, which sizes the pools with eviction (default: prompt + "
                        "output + 64); e.g. 131136 with --prompt-len 16384 serves short requests on a 128K server")
    p.add_argument("--time-limit", type=float, help="stop waiting after this many seconds per phase (partial)")
    p.add_argument("--sample-every", type=float, default=5.0,
                   help="seconds between samples of the scheduler's load (running, waiting, retracted); 0: off")
    p.add_argument("--out", help="JSON file (rewritten after each phase)")
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    a = p.parse_args(argv)
    settings = parse_settings(p, a.settings)
    a.requests = parse_positive_ints(p, "--requests", a.requests)
    if a.context_len is not None and a.context_len < a.prompt_len + a.output_len:
        p.error(f"--context-len: must hold --prompt-len + --output-len = {a.prompt_len + a.output_len}; "
                f"got {a.context_len}")
    result = {"meta": run_meta(a.model), "rows": []}

    measure_settings(settings, measure, a, result)  # rows saved as they come
    print(f"\n{result['meta']['gpu']}, {result['meta']['date']}, {Path(a.model).name}, dummy weights, "
          f"{a.prompt_len} in -> {a.output_len} out per request")
    print(f"{'setting':22} {'KV pool tokens':>15} {'done':>8} {'seconds':>8} {'out tok/s':>10} {'finished tok/s':>15} "
          f"{'peak decoding':>14} {'peak running':>13} {'prefill/prompt':>15}")
    for r in result["rows"]:
        done = f"{r['completed']}/{r['requests']}" + ("*" if r["partial"] else "")
        print(f"{r['setting']:22} {str(r['max_total_num_tokens']):>15} {done:>8} {r['seconds']:8.1f} "
              f"{r['output_tok_s']:10.1f} {r['finished_tok_s']:15.1f} {r['peak_concurrent_decoding']:14d} "
              f"{str(r.get('peak_running_reqs', '-')):>13} {r.get('prefill_per_prompt_token') or 0:15.2f}")
    if any(r["partial"] for r in result["rows"]):
        print("* stopped at --time-limit: tokens/s counts every token streamed until then, finished or not")


if __name__ == "__main__":
    main()
