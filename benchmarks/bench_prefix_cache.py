"""Prefix-cache benchmark: radix-cache reuse with window eviction on, off, and in stock SGLang (GPU).

For each setting one ``sglang.Engine`` (dummy weights, default Qwen3-4B-Instruct-2507 shape,
token ids in) is warmed up, then runs each workload from an empty cache:

* ``multi-turn``: ``--conversations`` chats of ``--turns`` turns. Turn 1 is ``--first-len``
  random tokens; every later prompt is the previous prompt, the previous turn's generated ids
  and ``--user-len`` new tokens. Each turn generates ``--output-len`` tokens (EOS ignored). All
  conversations' turn t go at once; turn t+1 starts when all of turn t finished.
* ``shared-prompt``: ``--requests`` prompts of one ``--system-len`` system prompt and a distinct
  ``--suffix-len`` suffix each, sent in waves of ``--concurrency`` (0: all at once), each wave
  after the previous one finished.

Per setting and workload it reports the prompt tokens sent, the tokens the engine reused
(``meta_info["cached_tokens"]`` of each response), the hit rate, the reusable bound (what an
ideal cache could reuse, from the workload alone: each prompt's longest common prefix with the
KV of everything sent before it, at most the prompt minus its last token, page-aligned down), the
hit rate relative to that bound, time to first token p50/p90 (first turn against later turns;
the first request against the rest) and the wall time. Progress on stderr, JSON with every
request (``--out``, rewritten after each workload), a markdown table last.

    python benchmarks/bench_prefix_cache.py --out prefix_cache.json

What "everything sent before" holds: for a request of an earlier turn or wave, its prompt and
its generated ids but the last (no forward pass ever computes KV for the last sampled token,
so no cache can hold it); for an earlier request of the same wave, its prompt (sent at the same
time, its output does not exist yet). The bound follows send order, so within the first wave
of the shared prompt it credits every request but the first with the system prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from common import add_engine_args, make_parser, measure_settings, package_version, parse_settings, run_meta, start_engine

WORKLOADS = ("multi-turn", "shared-prompt")
# the TTFT groups of each workload: the requests that cannot hit the cache, and the rest
GROUP_NAMES = {"multi-turn": ("first turn", "later turns"), "shared-prompt": ("first request", "the rest")}
TOKEN_LO, TOKEN_HI = 1000, 100000  # random prompt ids, as the other engine benchmarks draw them
WARMUP_LEN, WARMUP_EXTRA = 8192, 512  # one full prefill chunk, then a prefix hit on it

# what one streamed request gave: output ids, cached tokens, seconds to the first chunk and to the end
RequestResult = dict[str, Any]
SendWave = Callable[[list[list[int]]], list[RequestResult]]


# -- workloads (pure) -----------------------------------------------------------------------------
def random_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(TOKEN_LO, TOKEN_HI) for _ in range(n)]


def distinct_heads(rng: random.Random, count: int, length: int) -> list[list[int]]:
    """``count`` random id lists of ``length``, no two starting with the same id, so that they share
    no prefix at all (the reusable bound then depends on the workload's structure, not on chance)."""
    lists: list[list[int]] = []
    heads: set[int] = set()
    for _ in range(count):
        ids = random_ids(rng, length)
        while ids[0] in heads:
            ids[0] = rng.randrange(TOKEN_LO, TOKEN_HI)
        heads.add(ids[0])
        lists.append(ids)
    return lists


def next_turn_prompt(prompt: Sequence[int], output_ids: Sequence[int], user_ids: Sequence[int]) -> list[int]:
    """A chat's next prompt: everything so far, the model's answer, the user's new message."""
    return [*prompt, *output_ids, *user_ids]


def run_multi_turn(send_wave: SendWave, rng: random.Random, conversations: int, turns: int, first_len: int,
                   user_len: int, on_wave: Callable[[int, list[dict]], None] | None = None) -> list[list[dict]]:
    """Drive the multi-turn workload through ``send_wave`` (all conversations' turn at once); one list
    per turn of ``{"prompt", **result}``. The random draws do not depend on the outputs, so one seed
    gives every setting the same first prompts and user messages."""
    prompts = distinct_heads(rng, conversations, first_len)
    waves: list[list[dict]] = []
    for turn in range(turns):
        if turn:
            prompts = [next_turn_prompt(prev["prompt"], prev["output_ids"], random_ids(rng, user_len))
                       for prev in waves[-1]]
        waves.append([{"prompt": p, **r} for p, r in zip(prompts, send_wave(prompts))])
        if on_wave:
            on_wave(turn, waves[-1])
    return waves


def shared_prompt_requests(rng: random.Random, system_len: int, suffix_len: int, requests: int) -> list[list[int]]:
    """One system prompt followed by a distinct suffix per request."""
    system = random_ids(rng, system_len)
    return [system + suffix for suffix in distinct_heads(rng, requests, suffix_len)]


def wave_slices(requests: int, concurrency: int) -> list[range]:
    """Indices of each wave: ``concurrency`` at a time (0: all at once)."""
    size = concurrency or requests
    return [range(start, min(start + size, requests)) for start in range(0, requests, size)]


def run_shared_prompt(send_wave: SendWave, rng: random.Random, system_len: int, suffix_len: int, requests: int,
                      concurrency: int, on_wave: Callable[[int, list[dict]], None] | None = None) -> list[list[dict]]:
    """Drive the shared-prompt workload through ``send_wave``, one wave after the other."""
    prompts = shared_prompt_requests(rng, system_len, suffix_len, requests)
    waves: list[list[dict]] = []
    for number, indices in enumerate(wave_slices(requests, concurrency)):
        batch = [prompts[i] for i in indices]
        waves.append([{"prompt": p, **r} for p, r in zip(batch, send_wave(batch))])
        if on_wave:
            on_wave(number, waves[-1])
    return waves


# -- the reusable bound (pure) --------------------------------------------------------------------
def common_prefix_len(a: Sequence[int], b: Sequence[int], block: int = 256) -> int:
    """Length of the longest common prefix (blocks compared as slices first: prompts run to 16K+ ids)."""
    n = min(len(a), len(b))
    i = 0
    while i + block <= n and a[i:i + block] == b[i:i + block]:
        i += block
    while i < n and a[i] == b[i]:
        i += 1
    return i


def kv_held_after(prompt: Sequence[int], output_ids: Sequence[int]) -> list[int]:
    """The ids whose KV exists once a request finished: its prompt and its output but the last id."""
    return [*prompt, *output_ids[:-1]]


def reusable_bound(waves: Sequence[Sequence[tuple[Sequence[int], Sequence[int]]]], page_size: int) -> list[list[int]]:
    """Per request (``waves`` of ``(prompt, output_ids)`` in send order), the tokens an ideal cache
    could reuse: the longest common prefix with any KV present when it was sent (earlier waves:
    prompt + output but the last id; earlier requests of its own wave: their prompt), at most the
    prompt minus one token (the engine always computes the last prompt token, for its logits),
    rounded down to ``page_size`` (the radix cache matches whole pages only)."""
    held: list[Sequence[int]] = []
    bounds: list[list[int]] = []
    for wave in waves:
        wave_bounds = []
        for i, (prompt, _) in enumerate(wave):
            earlier = [*held, *(p for p, _ in wave[:i])]
            longest = max((common_prefix_len(prompt, seq) for seq in earlier), default=0)
            usable = max(0, min(longest, len(prompt) - 1))
            wave_bounds.append(usable // page_size * page_size)
        bounds.append(wave_bounds)
        held.extend(kv_held_after(p, out) for p, out in wave)
    return bounds


# -- metrics (pure) -------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile, linear between the closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def request_rows(workload: str, waves: Sequence[Sequence[dict]], bounds: Sequence[Sequence[int]]) -> list[dict]:
    """One JSON row per request (token ids left out: they would dwarf the rest). ``first`` marks the
    requests that nothing before them could serve: multi-turn's first turn, the shared prompt's
    first request."""
    rows = []
    for wave_no, (wave, wave_bounds) in enumerate(zip(waves, bounds)):
        for i, (req, bound) in enumerate(zip(wave, wave_bounds)):
            first = wave_no == 0 if workload == "multi-turn" else (wave_no == 0 and i == 0)
            rows.append({"wave": wave_no, "index": i, "first": first, "prompt_tokens": len(req["prompt"]),
                         "output_tokens": len(req["output_ids"]), "cached_tokens": req["cached_tokens"],
                         "bound_tokens": bound, "ttft_s": req["ttft_s"], "latency_s": req["latency_s"]})
    return rows


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _ttft(rows: Sequence[dict]) -> dict:
    ttfts = [r["ttft_s"] for r in rows]
    return {"n": len(ttfts), "p50_s": percentile(ttfts, 50), "p90_s": percentile(ttfts, 90)}


def summarize(rows: Sequence[dict], wall_s: float) -> dict:
    """Totals over a workload's requests: hit rate = cached / prompt tokens, bound rate = bound /
    prompt tokens, hit vs bound = cached / bound (None without a reusable token); TTFT p50/p90 of
    the ``first`` requests and of the rest; per wave, the same token counts."""
    prompt = sum(r["prompt_tokens"] for r in rows)
    cached = sum(r["cached_tokens"] for r in rows)
    bound = sum(r["bound_tokens"] for r in rows)
    per_wave = []
    for wave_no in sorted({r["wave"] for r in rows}):
        in_wave = [r for r in rows if r["wave"] == wave_no]
        per_wave.append({"wave": wave_no, "requests": len(in_wave),
                         "prompt_tokens": sum(r["prompt_tokens"] for r in in_wave),
                         "cached_tokens": sum(r["cached_tokens"] for r in in_wave),
                         "bound_tokens": sum(r["bound_tokens"] for r in in_wave),
                         "ttft_p50_s": percentile([r["ttft_s"] for r in in_wave], 50)})
    return {"requests": len(rows), "prompt_tokens": prompt, "cached_tokens": cached, "hit_rate": _ratio(cached, prompt),
            "bound_tokens": bound, "bound_rate": _ratio(bound, prompt), "hit_vs_bound": _ratio(cached, bound),
            "ttft": {"first": _ttft([r for r in rows if r["first"]]), "rest": _ttft([r for r in rows if not r["first"]])},
            "wall_s": wall_s, "per_wave": per_wave}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _p50_p90(group: dict) -> str:
    return "-" if not group["n"] else f"{group['p50_s']:.3f} / {group['p90_s']:.3f}"


def markdown_table(results: Sequence[dict]) -> list[str]:
    """One line per (setting, workload) result, as emitted by :func:`measure`."""
    lines = ["| setting | workload | prompt tokens | cached | hit rate | bound | bound rate | hit / bound | "
             "TTFT first p50 / p90 s | TTFT rest p50 / p90 s | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["summary"]
        lines.append(f"| {r['setting']} | {r['workload']} | {s['prompt_tokens']} | {s['cached_tokens']} | "
                     f"{_pct(s['hit_rate'])} | {s['bound_tokens']} | {_pct(s['bound_rate'])} | "
                     f"{_pct(s['hit_vs_bound'])} | {_p50_p90(s['ttft']['first'])} | {_p50_p90(s['ttft']['rest'])} | "
                     f"{s['wall_s']:.1f} |")
    return lines


# -- the engine -------------------------------------------------------------------------------------
async def stream_request(engine, prompt: list[int], output_len: int, clock=time.perf_counter) -> RequestResult:
    """One streamed request: its output ids, the cached tokens SGLang reports, and the seconds to its
    first chunk (TTFT) and to its end. SGLang streams the ids whole by default (the last chunk holds
    them all) or, with ``incremental_streaming_output``, as deltas: both are read."""
    params = {"temperature": 0, "max_new_tokens": output_len, "ignore_eos": True}
    t0 = clock()
    ttft = None
    last: dict | None = None
    deltas: list[int] = []
    async for chunk in await engine.async_generate(input_ids=prompt, sampling_params=params, stream=True):
        if ttft is None:
            ttft = clock() - t0
        last = chunk
        deltas.extend(chunk.get("output_ids") or [])
    if last is None:
        raise RuntimeError("stream_request: the request streamed nothing")
    meta = last["meta_info"]
    n = meta["completion_tokens"]
    output_ids = list(last["output_ids"]) if len(last.get("output_ids") or []) == n else deltas
    if len(output_ids) != n:
        raise RuntimeError(f"stream_request: {len(output_ids)} output ids streamed for {n} completion tokens")
    return {"output_ids": output_ids, "cached_tokens": meta["cached_tokens"], "ttft_s": ttft,
            "latency_s": clock() - t0}


def engine_sender(engine, output_len: int) -> SendWave:
    """A wave sender for the workloads: every prompt at once on the Engine's own event loop (its
    tokenizer manager lives there), back when all have finished."""
    async def wave(prompts: list[list[int]]) -> list[RequestResult]:
        return list(await asyncio.gather(*(stream_request(engine, p, output_len) for p in prompts)))

    return lambda prompts: engine.loop.run_until_complete(wave(prompts))


def flush_cache(engine, setting: str) -> None:
    """Empty the radix cache, so that each workload starts cold (SGLang flushes an idle scheduler only;
    wait up to 120 s for one)."""
    flushed = engine.loop.run_until_complete(engine.tokenizer_manager.flush_cache(timeout_s=120))
    if not flushed.success:
        raise RuntimeError(f"{setting}: flush_cache failed: {flushed}")


def longest_prompt(a: argparse.Namespace, workload: str) -> int:
    if workload == "multi-turn":
        return a.first_len + (a.turns - 1) * (a.output_len + a.user_len)
    return a.system_len + a.suffix_len


def context_needed(a: argparse.Namespace) -> int:
    """The Engine's context length: the longest prompt of the workloads run, its output, a margin."""
    return max(longest_prompt(a, w) for w in a.workloads) + a.output_len + 64


def warm_up(engine, rng: random.Random, longest: int) -> None:
    """A cold prefill and then a prefix hit on it, so that first-use costs (kernel JIT, the
    extend-with-prefix path) stay out of the first turn's and the first hit's TTFT."""
    params = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}
    base = random_ids(rng, max(1, min(WARMUP_LEN, longest // 2)))
    engine.generate(input_ids=base, sampling_params=params)
    engine.generate(input_ids=base + random_ids(rng, max(1, min(WARMUP_EXTRA, longest // 4))), sampling_params=params)


def _progress(setting: str, workload: str, total: int, page_size: int,
              sent: list[list[dict]]) -> Callable[[int, list[dict]], None]:
    """A stderr line per turn or wave: its cached tokens against its prompt tokens and its bound."""
    label = "turn" if workload == "multi-turn" else "wave"
    t_last = [time.perf_counter()]

    def on_wave(number: int, wave: list[dict]) -> None:
        sent.append(wave)
        bound = sum(reusable_bound([[(r["prompt"], r["output_ids"]) for r in w] for w in sent], page_size)[-1])
        now = time.perf_counter()
        ttft = percentile([r["ttft_s"] for r in wave], 50)
        print(f"{setting} {workload} {label} {number + 1}/{total}: {len(wave)} requests, "
              f"{sum(r['cached_tokens'] for r in wave)} of {sum(len(r['prompt']) for r in wave)} prompt tokens "
              f"cached (bound {bound}), TTFT p50 {ttft:.3f} s, {now - t_last[0]:.1f} s", file=sys.stderr, flush=True)
        t_last[0] = now

    return on_wave


def measure(setting: str, a: argparse.Namespace, emit: Callable[[dict], None]) -> None:
    """One engine for ``setting``; ``emit`` gets one result per workload as it ends."""
    t0 = time.perf_counter()
    engine = start_engine(setting, a.model, context_needed(a), a.mem, page_size=a.page_size)
    startup = time.perf_counter() - t0
    try:
        info = engine.get_server_info()
        page_size = info.get("page_size") or a.page_size  # what the engine runs with, which the bound follows
        pool = {k: v for k, v in info.items() if "token" in k or "swa" in k}
        t_warm = time.perf_counter()
        warm_up(engine, random.Random(a.seed + 1), max(longest_prompt(a, w) for w in a.workloads))
        warmup = time.perf_counter() - t_warm
        send = engine_sender(engine, a.output_len)
        for workload in a.workloads:
            flush_cache(engine, setting)
            rng = random.Random(a.seed)  # the same prompts for every setting
            sent: list[list[dict]] = []
            on_wave = _progress(setting, workload, a.turns if workload == "multi-turn" else
                                len(wave_slices(a.requests, a.concurrency)), page_size, sent)
            t_run = time.perf_counter()
            if workload == "multi-turn":
                waves = run_multi_turn(send, rng, a.conversations, a.turns, a.first_len, a.user_len, on_wave)
            else:
                waves = run_shared_prompt(send, rng, a.system_len, a.suffix_len, a.requests, a.concurrency, on_wave)
            wall = time.perf_counter() - t_run
            bounds = reusable_bound([[(r["prompt"], r["output_ids"]) for r in w] for w in waves], page_size)
            rows = request_rows(workload, waves, bounds)
            emit({"setting": setting, "workload": workload, "startup_s": startup, "warmup_s": warmup,
                  "page_size": page_size, "pool_info": pool, "groups": GROUP_NAMES[workload],
                  "summary": summarize(rows, wall), "requests": rows})
    finally:
        engine.shutdown()


# -- command line -----------------------------------------------------------------------------------
class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, and the docstring's paragraphs kept as written (they explain the workloads
    and the bound)."""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, epilog=__doc__.split("\n\n", 1)[1])
    p.formatter_class = _HelpFormatter
    add_engine_args(p, settings="vanilla,sink100-2k,sink100-2k+noevict", mem=0.85)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--page-size", type=int, default=1, help="the engines' KV page size (the bound is page-aligned to it)")
    p.add_argument("--output-len", type=int, default=256, help="tokens generated per request, EOS ignored (both workloads)")
    p.add_argument("--seed", type=int, default=0, help="seeds the prompts, the same for every setting")
    p.add_argument("--out", help="JSON file (rewritten after each workload)")
    mt = p.add_argument_group("multi-turn")
    mt.add_argument("--conversations", type=int, default=8, help="chats, each turn of all of them sent at once")
    mt.add_argument("--turns", type=int, default=6, help="turns per chat")
    mt.add_argument("--first-len", type=int, default=8192, help="tokens of the first turn's prompt")
    mt.add_argument("--user-len", type=int, default=512, help="new user tokens each later turn appends")
    sp = p.add_argument_group("shared-prompt")
    sp.add_argument("--system-len", type=int, default=16384, help="tokens of the system prompt every request starts with")
    sp.add_argument("--suffix-len", type=int, default=256, help="tokens of each request's own suffix")
    sp.add_argument("--requests", type=int, default=32, help="requests in all")
    sp.add_argument("--concurrency", type=int, default=8, help="requests per wave, each wave after the previous one (0: all at once)")
    return p


def parse_workloads(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """``--workloads`` split and checked (known names, none twice), or a parser error naming the flag."""
    names = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if not names or unknown:
        parser.error(f"--workloads: unknown workload {unknown[0]!r}; allowed: {', '.join(WORKLOADS)}" if unknown
                     else f"--workloads: empty; allowed: {', '.join(WORKLOADS)}")
    repeated = sorted({w for w in names if names.count(w) > 1})
    if repeated:
        parser.error(f"--workloads: {', '.join(repeated)} given more than once")
    return names


def check_args(parser: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Refuse sizes no workload can run with, naming the flag, before any engine starts."""
    minimum = {"--conversations": 1, "--turns": 1, "--first-len": 1, "--user-len": 1, "--output-len": 1,
               "--system-len": 1, "--suffix-len": 1, "--requests": 1, "--concurrency": 0, "--page-size": 1}
    for flag, least in minimum.items():
        value = getattr(a, flag[2:].replace("-", "_"))
        if value < least:
            parser.error(f"{flag}: must be at least {least}" + (" (0: all at once)" if flag == "--concurrency" else "")
                         + f"; got {value}")
    if not 0 < a.mem < 1:
        parser.error(f"--mem: a fraction of GPU memory between 0 and 1; got {a.mem}")


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    a = p.parse_args(argv)
    settings = parse_settings(p, a.settings)
    a.workloads = parse_workloads(p, a.workloads)
    check_args(p, a)
    params = {k: getattr(a, k) for k in ("workloads", "page_size", "output_len", "seed", "conversations", "turns",
                                         "first_len", "user_len", "system_len", "suffix_len", "requests",
                                         "concurrency")}
    result: dict[str, Any] = {"meta": run_meta(a.model, settings=settings, **params, context_len=context_needed(a),
                                               sglang=package_version("sglang"), flashinfer=package_version("flashinfer-python")),
                              "rows": []}

    measure_settings(settings, measure, a, result)  # rows saved as they come
    print(f"\n{result['meta']['gpu']}, {result['meta']['date']}, {Path(a.model).name}, dummy weights, "
          f"page size {a.page_size}, {a.output_len} tokens out per request")
    print(f"multi-turn: {a.conversations} chats x {a.turns} turns, {a.first_len} first + {a.user_len} per later turn; "
          f"shared-prompt: {a.requests} x ({a.system_len} + {a.suffix_len}), waves of {a.concurrency or a.requests}")
    print("TTFT first: multi-turn's first turn, shared-prompt's first request; rest: all other requests. "
          "bound: what an ideal cache could reuse\n")
    print("\n".join(markdown_table(result["rows"])))


if __name__ == "__main__":
    main()
