"""Soak and fault tests against a running SGLang server (SWAA or not), stdlib only.

Soak (default): ``--requests`` token-id prompts (SGLang's native ``/generate`` with
``input_ids``, so no tokenizer is needed here) of log-uniform length in
``[--min-len, --max-len]``, ``max_new_tokens`` mixed in 1..256 with ``ignore_eos``, a share
of them starting with one of a few common prefixes (radix cache hits), sent with
``--concurrency`` workers. Records per-request latency and errors.

``--faults``: an empty prompt, a prompt over the context, ``max_new_tokens`` = 10**9, a
malformed JSON body, a client that disconnects mid-stream, and an abort (``/abort_request``
with the request's ``rid``) during the chunked prefill of a long prompt; after each one a
normal request must still succeed, within ``--slow-recovery`` seconds, and the server must go
idle (nothing left running, e.g. a disconnected stream) within ``--settle-timeout``.
``--rounds N`` repeats the sequence on the same server.

Both end with the KV pool accounting read from SGLang 0.5.17's ``GET /v1/loads?include=core``
(``loads[i].num_used_tokens`` = pool size - free - evictable radix-cache tokens, so 0 on an
idle server whatever the cache holds; ``token_usage``, ``max_total_num_tokens``), read once
the server is idle (``num_running_reqs`` and ``num_waiting_reqs`` 0): used tokens after
must equal before, or KV leaked. ``/flush_cache`` is not a leak test (it clears the
allocator outright, and refuses while requests run), so it is only called with ``--flush``.

Prints a table and writes JSON (``--out``) with the GPU name (``/v1/loads`` ``accelerator``,
else nvidia-smi), the date and the command. ``--launch "ARGS"`` starts
``python -m swaa_sglang.launch_server ARGS --port PORT`` itself (``--launch-command`` replaces
the command), waits for ``/health`` and stops it afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from common import add_launch_args, launch_server, make_parser, stop_server

TOKEN_LO, TOKEN_HI = 100, 30000  # ids valid in any vocabulary of 32k or more


# -- HTTP ------------------------------------------------------------------------------------------
class Client:
    def __init__(self, url: str, timeout: float = 600):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None,
                timeout: Optional[float] = None) -> tuple[int, Any]:
        """(HTTP status, parsed JSON or text); status 0 and the exception text if no response came."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                status, text = r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as e:
            return 0, f"{type(e).__name__}: {e}"
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def generate(self, input_ids: list[int], max_new_tokens: int, rid: Optional[str] = None,
                 timeout: Optional[float] = None) -> tuple[int, Any]:
        body: dict[str, Any] = {"input_ids": input_ids,
                                "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True,
                                                    "temperature": 0}}
        if rid is not None:
            body["rid"] = rid
        return self.request("POST", "/generate", body, timeout=timeout)

    def loads(self) -> Optional[dict]:
        """Pool accounting summed over DP ranks, from ``/v1/loads?include=core``; None if unavailable."""
        status, body = self.request("GET", "/v1/loads?include=core", timeout=30)
        if status != 200 or not isinstance(body, dict) or not body.get("loads"):
            return None
        rows = body["loads"]
        out = {key: sum(int(r.get(key, 0)) for r in rows)
               for key in ("num_used_tokens", "max_total_num_tokens", "num_running_reqs", "num_waiting_reqs")}
        out["token_usage"] = max(float(r.get("token_usage", 0.0)) for r in rows)
        out["accelerator"] = body.get("accelerator")
        return out

    def wait_idle(self, timeout: float = 120) -> Optional[dict]:
        """Pool accounting once no request runs or waits (the last reading if it never gets idle)."""
        end = time.time() + timeout
        last = None
        while time.time() < end:
            last = self.loads()
            if last is None or is_idle(last):
                return last
            time.sleep(0.5)
        return last


def is_idle(load: dict) -> bool:
    """A ``Client.loads`` reading with no request running or waiting."""
    return load["num_running_reqs"] == 0 and load["num_waiting_reqs"] == 0


def output_tokens(body: Any) -> int:
    meta = body.get("meta_info", {}) if isinstance(body, dict) else {}
    return int(meta.get("completion_tokens", 0))


def error_text(status: int, body: Any) -> str:
    if isinstance(body, dict):
        body = body.get("error", body.get("message", body.get("detail", body)))
    return f"{status}: {str(body)[:300]}"


# -- soak --------------------------------------------------------------------------------------------
def make_requests(n: int, min_len: int, max_len: int, max_new: int, shared_frac: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    base = [rng.randrange(TOKEN_LO, TOKEN_HI) for _ in range(max_len)]  # shared prefixes are prefixes of this
    prefixes = [[rng.randrange(TOKEN_LO, TOKEN_HI)] + base[: rng.randint(1, max_len)] for _ in range(4)]
    out = []
    for i in range(n):
        length = int(round(math.exp(rng.uniform(math.log(min_len), math.log(max_len)))))
        length = min(max(length, min_len), max_len)
        ids: list[int] = []
        shared = rng.random() < shared_frac
        if shared:
            ids = prefixes[rng.randrange(len(prefixes))][: max(length - 1, 1)]
        ids = ids + [rng.randrange(TOKEN_LO, TOKEN_HI) for _ in range(length - len(ids))]
        out.append({"i": i, "input_ids": ids[:length], "max_new_tokens": rng.randint(1, max_new), "shared": shared})
    return out


def progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr)
    except ImportError:
        class Plain:
            def __init__(self):
                self.n = 0

            def update(self, k=1):
                self.n += k
                if self.n % max(total // 20, 1) == 0 or self.n == total:
                    print(f"{desc}: {self.n}/{total}", file=sys.stderr, flush=True)

            def close(self):
                pass

        return Plain()


def percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def run_soak(client: Client, args) -> dict:
    reqs = make_requests(args.requests, args.min_len, args.max_len, args.max_new_tokens, args.shared_frac, args.seed)
    before = client.wait_idle()
    results: list[dict] = []
    bar = progress(len(reqs), "soak")
    t0 = time.time()

    def one(r: dict) -> dict:
        start = time.time()
        status, body = client.generate(r["input_ids"], r["max_new_tokens"])
        rec = {"i": r["i"], "prompt_len": len(r["input_ids"]), "max_new_tokens": r["max_new_tokens"],
               "shared_prefix": r["shared"], "status": status, "latency_s": time.time() - start}
        if status == 200 and isinstance(body, dict) and "meta_info" in body:
            rec["output_tokens"] = output_tokens(body)
            rec["cached_tokens"] = int(body["meta_info"].get("cached_tokens", 0))
        else:
            rec["error"] = error_text(status, body)
        return rec

    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for fut in as_completed([pool.submit(one, r) for r in reqs]):
            results.append(fut.result())
            bar.update(1)
    bar.close()
    wall = time.time() - t0
    after = client.wait_idle()
    ok = [r for r in results if "error" not in r]
    lat = [r["latency_s"] for r in ok]
    out_tok = sum(r["output_tokens"] for r in ok)
    errors: dict[str, int] = {}
    for r in results:
        if "error" in r:
            errors[r["error"][:120]] = errors.get(r["error"][:120], 0) + 1
    summary = {
        "requests": len(results), "ok": len(ok), "errors": len(results) - len(ok), "error_kinds": errors,
        "p50_latency_s": percentile(lat, 50), "p99_latency_s": percentile(lat, 99), "wall_s": wall,
        "output_tokens": out_tok, "output_tok_per_s": out_tok / wall if wall > 0 else None,
        "prompt_tokens": sum(r["prompt_len"] for r in results),
        "cached_tokens": sum(r.get("cached_tokens", 0) for r in ok),
        "shared_prefix_requests": sum(r["shared_prefix"] for r in results),
    }
    return {"summary": summary, "pool_before": before, "pool_after": after, "per_request": sorted(results, key=lambda r: r["i"])}


# -- faults ------------------------------------------------------------------------------------------
def stream_then_disconnect(url: str, input_ids: list[int], chunks: int = 3, timeout: float = 120) -> dict:
    """Open a streaming /generate, read a few SSE chunks, then close the socket."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    body = json.dumps({"input_ids": input_ids, "stream": True,
                       "sampling_params": {"max_new_tokens": 4096, "ignore_eos": True}})
    conn.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    got = 0
    if resp.status == 200:
        while got < chunks:
            line = resp.fp.readline()
            if not line:
                break
            if line.startswith(b"data:"):
                got += 1
    try:  # a hard close: RST instead of a polite FIN where possible
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except (OSError, AttributeError):
        pass
    conn.close()
    return {"status": resp.status, "detail": f"read {got} chunks, then closed the connection"}


def abort_during_prefill(client: Client, input_ids: list[int], delay: float) -> dict:
    rid = f"soak-abort-{os.getpid()}-{time.time_ns()}"
    result: dict = {}

    def send():
        result["status"], result["body"] = client.generate(input_ids, 16, rid=rid)

    t = threading.Thread(target=send)
    t.start()
    time.sleep(delay)
    abort_status, _ = client.request("POST", "/abort_request", {"rid": rid}, timeout=30)
    t.join(timeout=600)
    body = result.get("body")
    finish = body.get("meta_info", {}).get("finish_reason") if isinstance(body, dict) else None
    return {"status": result.get("status"), "abort_status": abort_status,
            "detail": f"finish_reason={json.dumps(finish)}" if finish is not None else error_text(result.get("status", 0), body)}


def run_faults(client: Client, args) -> dict:
    rng = random.Random(args.seed)
    info_status, info = client.request("GET", "/server_info", timeout=30)
    info = info if isinstance(info, dict) else {}
    max_input = int(info.get("max_req_input_len") or info.get("context_length") or args.max_len)
    chunk = int(info.get("chunked_prefill_size") or 8192)
    if chunk <= 0:
        chunk = 8192
    before = client.wait_idle()

    def ids(n: int) -> list[int]:
        return [rng.randrange(TOKEN_LO, TOKEN_HI) for _ in range(n)]

    long_len = min(max_input - 32, max(4 * chunk, 4096))
    faults: list[tuple[str, Callable[[], dict]]] = [
        ("empty_prompt", lambda: _status_of(client.generate([], 8))),
        ("prompt_over_context", lambda: _status_of(client.generate(ids(max_input + 16), 8))),
        ("absurd_max_new_tokens", lambda: _status_of(client.generate(ids(16), 10**9, timeout=args.fault_timeout))),
        ("malformed_json", lambda: _status_of(client.request("POST", "/generate", raw=b'{"input_ids": [1, 2,'))),
        ("disconnect_mid_stream", lambda: stream_then_disconnect(client.url, ids(64))),
        ("abort_during_chunked_prefill", lambda: abort_during_prefill(client, ids(long_len), args.abort_delay)),
    ]
    warmup = None if args.no_warmup else warm_up_sampling(client, ids(64), ids(32))
    rows = []
    for round_ in range(args.rounds):
        for name, fault in faults:
            rows.append(run_fault(client, name, fault, ids(32), args, round_))
    after = client.wait_idle()
    slow = [f"{r['fault']} (round {r['round']}): {r['recover_s']} s" for r in rows
            if r["recover_s"] > args.slow_recovery]
    unsettled = [f"{r['fault']} (round {r['round']})" for r in rows if r["settled"] is False]
    return {"warmup": warmup, "faults": rows, "pool_before": before, "pool_after": after,
            "summary": {"faults": len(rows), "rounds": args.rounds,
                        "healthy_after_all": all(r["healthy_after"] for r in rows),
                        "max_recover_s": max(r["recover_s"] for r in rows),
                        "max_settle_s": max(r["settle_s"] for r in rows),
                        "slow_recoveries": slow, "unsettled": unsettled}}


def warm_up_sampling(client: Client, sampled_ids: list[int], greedy_ids: list[int]) -> dict:
    """A sampled and a greedy request decoding in one batch, before any fault. SGLang then samples
    the batch with FlashInfer's top-k/top-p kernel (the greedy request's top_k = 1 sets the batch's
    flag), whose module FlashInfer compiles on first use on a machine (1-2 minutes, the scheduler
    waits); the faults after it then measure fault handling, not that compile. Its time is kept."""
    result: dict = {}

    def sampled():
        body = {"input_ids": sampled_ids, "sampling_params": {"max_new_tokens": 256, "ignore_eos": True,
                                                              "temperature": 1.0}}
        result["sampled_status"], _ = client.request("POST", "/generate", body)

    start = time.time()
    t = threading.Thread(target=sampled)
    t.start()
    time.sleep(0.05)  # the sampled request first, so that the greedy one joins its decode batch
    status, body = client.generate(greedy_ids, 8)
    t.join()
    out = {"seconds": round(time.time() - start, 3), "greedy_status": status,
           "sampled_status": result.get("sampled_status")}
    print(f"warm-up (a sampled and a greedy request together): {out['seconds']} s", file=sys.stderr, flush=True)
    return out


def run_fault(client: Client, name: str, fault: Callable[[], dict], probe_ids: list[int], args,
              round_: int) -> dict:
    """One fault, then the two things a server that survived it does: answer a normal request
    promptly (``recover_s``: that request's latency; over ``--slow-recovery`` is a failure) and go
    idle (``settle_s``: until no request runs or waits, e.g. a disconnected stream still decoding;
    not idle within ``--settle-timeout`` is a failure). Wall-clock times (UTC) line the row up
    with the server log."""
    started = datetime.now(timezone.utc)
    start = time.time()
    try:
        row = fault()
    except Exception as e:  # the fault itself failing is an outcome too
        row = {"status": None, "detail": f"{type(e).__name__}: {e}"}
    row = {"fault": name, "round": round_, "started_at": started.isoformat(timespec="milliseconds"),
           **row, "seconds": round(time.time() - start, 3)}
    row["loads_after_fault"] = client.loads()
    probe_start = time.time()
    status, body = client.generate(probe_ids, 8, timeout=args.recover_timeout)
    row["recover_s"] = round(time.time() - probe_start, 3)
    row["healthy_after"] = status == 200 and output_tokens(body) == 8
    if not row["healthy_after"]:
        row["probe_error"] = error_text(status, body)
    settle_start = time.time()
    idle = client.wait_idle(timeout=args.settle_timeout)
    row["settle_s"] = round(time.time() - settle_start, 3)
    # None: /v1/loads unavailable, so not known
    row["settled"] = None if idle is None else is_idle(idle)
    print(f"{name} (round {round_}): status {row.get('status')} ({row.get('detail', '')[:100]}); healthy after: "
          f"{row['healthy_after']} in {row['recover_s']} s; idle after {row['settle_s']} s", file=sys.stderr, flush=True)
    return row


def _status_of(resp: tuple[int, Any]) -> dict:
    status, body = resp
    if status == 200 and isinstance(body, dict):
        meta = body.get("meta_info", {})
        return {"status": status, "detail": f"completion_tokens={meta.get('completion_tokens')} "
                                            f"finish_reason={json.dumps(meta.get('finish_reason'))}"}
    return {"status": status, "detail": error_text(status, body)}


# -- reporting ---------------------------------------------------------------------------------------
def gpu_name(pool: Optional[dict]) -> Optional[str]:
    if pool and pool.get("accelerator"):
        return pool["accelerator"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def leak_check(before: Optional[dict], after: Optional[dict]) -> dict:
    if not before or not after:
        return {"checked": False, "reason": "/v1/loads unavailable"}
    idle = is_idle(after)
    return {"checked": idle, "used_before": before["num_used_tokens"], "used_after": after["num_used_tokens"],
            "leaked_tokens": after["num_used_tokens"] - before["num_used_tokens"] if idle else None,
            "ok": idle and after["num_used_tokens"] == before["num_used_tokens"]}


def print_table(report: dict) -> None:
    s, leak = report["summary"], report["leak_check"]

    def fmt(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    rows = []
    if report["mode"] == "soak":
        rows += [("requests", s["requests"]), ("errors", s["errors"]), ("p50 latency (s)", s["p50_latency_s"]),
                 ("p99 latency (s)", s["p99_latency_s"]), ("output tok/s", s["output_tok_per_s"]),
                 ("cached prompt tokens", s["cached_tokens"])]
    else:
        rows += [(f"fault {r['fault']}" + (f" (round {r['round']})" if s["rounds"] > 1 else ""),
                  f"status {r.get('status')}, healthy after: {r['healthy_after']} in {r['recover_s']} s, "
                  f"idle after {r['settle_s']} s") for r in report["faults"]]
        if report.get("warmup"):
            rows.insert(0, ("warm-up (s)", report["warmup"]["seconds"]))
        rows += [("slow recoveries", "; ".join(s["slow_recoveries"]) or "none"),
                 ("not idle afterwards", "; ".join(s["unsettled"]) or "none")]
    for key in ("pool_before", "pool_after"):
        p = report[key]
        rows.append((f"{key.replace('_', ' ')} (used tokens / usage)",
                     "-" if not p else f"{p['num_used_tokens']} / {p['token_usage']:.4f}"))
    rows.append(("KV leak check", "not checked" if not leak.get("checked") else
                 ("ok" if leak["ok"] else f"LEAK: {leak['leaked_tokens']} tokens")))
    width = max(len(k) for k, _ in rows)
    print(f"{'':-<{width}}  {'':-<30}")
    for k, v in rows:
        print(f"{k:<{width}}  {fmt(v)}")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, epilog="Example: python benchmarks/soak.py --launch '--swaa-preset balanced "
                                "--model-path Qwen/Qwen3-4B-Instruct-2507' --requests 1000 --concurrency 64")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:30000")
    where.add_argument("--launch", metavar="ARGS", help="start python -m swaa_sglang.launch_server ARGS here")
    add_launch_args(p)
    p.add_argument("--server-log", default="soak_server.log", help="where the --launch server writes its output")
    p.add_argument("--faults", action="store_true", help="run the fault sequence instead of the soak")
    p.add_argument("--requests", type=int, default=1000, help="soak: number of requests")
    p.add_argument("--concurrency", type=int, default=64, help="soak: requests in flight at once")
    p.add_argument("--min-len", type=int, default=1, help="shortest prompt (tokens); lengths are log-uniform")
    p.add_argument("--max-len", type=int, default=32768, help="longest prompt (tokens)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="max_new_tokens drawn uniformly in 1..this")
    p.add_argument("--shared-frac", type=float, default=0.3, help="share of prompts starting with a common prefix")
    p.add_argument("--seed", type=int, default=0, help="random seed (prompt lengths, token ids, output lengths)")
    p.add_argument("--timeout", type=float, default=1800, help="per-request timeout (s)")
    p.add_argument("--fault-timeout", type=float, default=30,
                   help="how long the absurd-max_new_tokens request may run before the client gives up (s)")
    p.add_argument("--abort-delay", type=float, default=0.3, help="seconds between sending the long prompt and aborting it")
    p.add_argument("--no-warmup", action="store_true",
                   help="faults: skip the warm-up (a sampled and a greedy request together, so that first-use "
                   "kernel compiles happen before the faults, with their time recorded)")
    p.add_argument("--rounds", type=int, default=1,
                   help="faults: run the sequence this many times on the same server (a first-use cost shows once, "
                   "a defect every round)")
    p.add_argument("--recover-timeout", type=float, default=120,
                   help="faults: how long the normal request after each fault may take before it counts as failed (s)")
    p.add_argument("--slow-recovery", type=float, default=10,
                   help="faults: a normal request after a fault that takes longer than this fails the run (s)")
    p.add_argument("--settle-timeout", type=float, default=120,
                   help="faults: how long the server may take to go idle after each fault (s)")
    p.add_argument("--flush", action="store_true", help="call /flush_cache at the end and record the pool after it")
    p.add_argument("--out", help="write the JSON report here")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.min_len <= args.max_len:
        raise SystemExit("--min-len/--max-len: need 1 <= min-len <= max-len")
    if args.rounds < 1:
        raise SystemExit(f"--rounds: got {args.rounds}; need at least 1")
    proc = None
    url = args.url
    if args.launch:
        proc, url = launch_server(shlex.split(args.launch), args.port, args.server_log, args.launch_timeout,
                                  shlex.split(args.launch_command))
    try:
        client = Client(url, timeout=args.timeout)
        result = run_faults(client, args) if args.faults else run_soak(client, args)
        if args.flush:
            status, _ = client.request("POST", "/flush_cache", timeout=60)
            result["flush_cache_status"] = status
            result["pool_after_flush"] = client.wait_idle()
    finally:
        if proc is not None:
            stop_server(proc)
    report = {
        "mode": "faults" if args.faults else "soak", "url": url,
        "gpu": gpu_name(result.get("pool_after") or result.get("pool_before")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "args": vars(args), **result,
    }
    report["leak_check"] = leak_check(result["pool_before"], result["pool_after"])
    print_table(report)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    failed = report["leak_check"].get("checked") and not report["leak_check"]["ok"]
    if args.faults:
        s = report["summary"]
        failed = failed or not s["healthy_after_all"] or bool(s["slow_recoveries"]) or bool(s["unsettled"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
