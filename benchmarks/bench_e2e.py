"""End-to-end benchmark: sglang.Engine with the swaa backend against vanilla SGLang (GPU).

For each setting (vanilla flashinfer, or a SWAA preset) one Engine is started on a
dummy-weight model config (default: Qwen3-4B-Instruct-2507 shape), then, one request at
a time after a warm-up: time to first token and decode tokens/s at each prompt length, both
from the same streamed request (TTFT the best of --repeats, decode their median);
and offline throughput for many concurrent long requests. Writes JSON (one file per
run, appended per setting so a killed run keeps what it measured) and prints a table.

    python benchmarks/bench_e2e.py --settings vanilla,sink100-2k,balanced --out results.json
    python benchmarks/bench_e2e.py --quick
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from common import add_engine_args, make_parser, parse_positive_ints, parse_settings, run_meta, start_engine, write_json

# SGLang's own switch for a context longer than the model config allows (named in messages and the JSON)
LONGER_CONTEXT_ENV = "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"


def context_needed(lengths: list[int], decode_tokens: int) -> int:
    """The Engine's context_length: the longest prompt, its decode run and a small margin."""
    return max(lengths) + decode_tokens + 64


def context_refusal(model: str, needed: int) -> str | None:
    """Why SGLang would refuse this context length for the model (None when it accepts it), asked
    before any Engine starts (SGLang itself refuses it only once its launcher is up). The limit and
    the override are SGLang's own: its context length derived from the config (length keys, rope
    scaling) and SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN."""
    config = Path(model) / "config.json"
    from sglang.srt.environ import envs

    if envs.SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN.get() or not config.is_file():
        return None  # a hub id: SGLang resolves and checks it itself
    from sglang.srt.utils.hf_transformers.common import get_context_length
    from transformers import AutoConfig

    limit = get_context_length(AutoConfig.from_pretrained(model))
    if needed <= limit:
        return None
    return (f"--lengths: the longest prompt plus --decode-tokens and a 64-token margin needs a context of "
            f"{needed}, but {config} allows {limit} (SGLang's context length for it: its length keys and rope "
            f"scaling); shorten "
            f"--lengths, or, for dummy-weight speed runs, set {LONGER_CONTEXT_ENV}=1 (SGLang's own override)")


def _ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1000, 100000) for _ in range(n)]


def _gen(engine, prompts, max_new: int) -> float:
    t0 = time.perf_counter()
    engine.generate(input_ids=prompts, sampling_params={"temperature": 0, "max_new_tokens": max_new, "ignore_eos": True})
    return time.perf_counter() - t0


def stream_timing(engine, prompt: list[int], max_new: int, clock=time.perf_counter) -> tuple[float, float]:
    """One streamed request: (seconds to its first token, decode tokens/s after that token).

    Both come from the same request: the decode rate counts the tokens streamed after the first
    chunk over the time since it, so no prefill time enters it (measuring decode as a second
    request's total minus another request's TTFT let prefill jitter, seconds at 128K, swamp a
    fraction of a second of decode).
    """
    t0 = clock()
    first_s = first_n = None
    n = 0
    for chunk in engine.generate(input_ids=prompt, stream=True,
                                 sampling_params={"temperature": 0, "max_new_tokens": max_new, "ignore_eos": True}):
        n = chunk["meta_info"]["completion_tokens"]
        if first_s is None:
            first_s, first_n = clock() - t0, n
    if first_s is None:
        raise RuntimeError("stream_timing: the request streamed nothing")
    end = clock() - t0
    if n <= first_n or end <= first_s:
        raise RuntimeError(f"stream_timing: no decode after the first chunk ({first_n} -> {n} tokens); "
                           "max_new must be at least 2")
    return first_s, (n - first_n) / (end - first_s)


def measure(setting: str, a) -> dict:
    try:
        from tqdm import tqdm
    except ImportError:
        def tqdm(x, **_):
            return x
    rng = random.Random(0)
    t0 = time.perf_counter()
    engine = start_engine(setting, a.model, context_needed(a.lengths, a.decode_tokens), a.mem)
    row = {"setting": setting, "startup_s": time.perf_counter() - t0, "single": [], "offline": None}
    try:
        # warm-up at the shortest length: a full prefill chunk and a decode run, so that first-use
        # costs (kernel JIT, Triton specialisation, allocator growth) stay out of the first row
        _gen(engine, [_ids(rng, min(a.lengths))], a.decode_tokens + 1)
        for n in tqdm(a.lengths, desc=f"{setting} single"):
            # fresh random prompts: no radix-cache hits; TTFT the best of the repeats, decode their median
            runs = [stream_timing(engine, _ids(rng, n), a.decode_tokens + 1) for _ in range(a.repeats)]
            row["single"].append({"prompt_tokens": n, "ttft_s": min(t for t, _ in runs),
                                  "decode_tok_s": statistics.median(r for _, r in runs),
                                  "runs": [{"ttft_s": t, "decode_tok_s": r} for t, r in runs]})
        if a.offline_requests:
            prompts = [_ids(rng, a.offline_len) for _ in range(a.offline_requests)]
            dt = _gen(engine, prompts, a.offline_out)
            row["offline"] = {"requests": a.offline_requests, "prompt_tokens": a.offline_len,
                              "output_tokens": a.offline_out, "seconds": dt,
                              "output_tok_s": a.offline_requests * a.offline_out / dt}
    finally:
        engine.shutdown()
    return row


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    add_engine_args(p, settings="vanilla,sink100-2k,balanced", mem=0.85)
    p.add_argument("--lengths", default="8192,32768,65536,131072", help="comma list of prompt lengths (tokens), one request at a time")
    p.add_argument("--decode-tokens", type=int, default=128, help="tokens decoded per request for the decode rate")
    p.add_argument("--repeats", type=int, default=2, help="requests per length (fresh prompts): TTFT the best, decode tok/s the median")
    p.add_argument("--offline-requests", type=int, default=32,
                   help="offline throughput: requests submitted at once (0: skip the offline part)")
    p.add_argument("--offline-len", type=int, default=32768, help="offline throughput: prompt tokens per request")
    p.add_argument("--offline-out", type=int, default=256, help="offline throughput: output tokens per request")
    p.add_argument("--quick", action="store_true", help="8K and 32K only, 8 offline requests")
    p.add_argument("--out", help="JSON file (rewritten after each setting)")
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    a = p.parse_args(argv)
    settings = parse_settings(p, a.settings)
    a.lengths = [8192, 32768] if a.quick else parse_positive_ints(p, "--lengths", a.lengths)
    if a.quick:
        a.offline_requests, a.offline_len = 8, 8192
    refusal = context_refusal(a.model, context_needed(a.lengths, a.decode_tokens))
    if refusal:
        p.error(refusal)
    import flashinfer
    import sglang
    import torch

    result = {"meta": run_meta(a.model, decode_method="stream", settings=settings,
                               **{LONGER_CONTEXT_ENV: os.environ.get(LONGER_CONTEXT_ENV)}, sglang=sglang.__version__,
                               flashinfer=flashinfer.__version__, torch=torch.__version__), "rows": []}
    for setting in settings:
        result["rows"].append(measure(setting, a))
        write_json(a.out, result)
    print(f"\n{result['meta']['gpu']}, {result['meta']['date']}, {Path(a.model).name}, dummy weights")
    print(f"{'setting':16} {'prompt':>8} {'TTFT s':>8} {'decode tok/s':>13}")
    for r in result["rows"]:
        for s in r["single"]:
            print(f"{r['setting']:16} {s['prompt_tokens']:>8} {s['ttft_s']:8.3f} {s['decode_tok_s']:13.1f}")
        if r["offline"]:
            o = r["offline"]
            print(f"{r['setting']:16} offline {o['requests']} x {o['prompt_tokens']} -> {o['output_tokens']}: "
                  f"{o['output_tok_s']:.1f} output tok/s")


if __name__ == "__main__":
    main()
