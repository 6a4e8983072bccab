"""benchmarks/soak.py against a fake SGLang server (CPU): what the script reports is what the server did.

The fake answers in SGLang 0.5.17's formats: ``/generate`` (``meta_info`` with
``completion_tokens``, ``cached_tokens``, ``finish_reason``; SSE ``data:`` lines when
streaming), ``/v1/loads`` (``{"accelerator", "loads": [{num_used_tokens, token_usage,
max_total_num_tokens, num_running_reqs, num_waiting_reqs, ...}]}`` as
``sglang/srt/entrypoints/v1_loads.py`` builds it from ``LoadSnapshot``), ``/server_info``
(``max_req_input_len``, ``chunked_prefill_size``), ``/abort_request`` (``{"rid"}``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from fake_http import JSONHandler

REPO = Path(__file__).resolve().parents[1]
SOAK = REPO / "benchmarks" / "soak.py"
MAX_INPUT = 2000


class FakeSGLang:
    def __init__(self, error_mod: int = 0, leak_tokens: int = 0, zombie_s: float = 0.0, stall_s: float = 0.0):
        """zombie_s: a streamed request keeps running this long (num_running_reqs 1), whatever the
        client does; stall_s: after a streamed request, /generate answers nothing for this long."""
        self.error_mod, self.leak_tokens = error_mod, leak_tokens
        self.zombie_s, self.stall_s = zombie_s, stall_s
        self.zombie_until = self.stall_until = 0.0
        self.lock = threading.Lock()
        self.generated = self.errors = self.sampled = 0
        self.aborted: set[str] = set()
        self.waiting: dict[str, threading.Event] = {}
        self.finished = False  # after the first /generate, report the leak (if any)
        self.log: list[tuple[str, str, int]] = []
        fake = self

        class Handler(JSONHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path.startswith("/v1/loads"):
                    used = fake.leak_tokens if fake.finished else 0
                    self._json({"timestamp": "2026-11-28T00:00:00+00:00", "version": "0.5.17", "accelerator": "Fake GPU 80GB",
                                "num_accelerators": 1,
                                "loads": [{"timestamp": 1.0, "dp_rank": 0,
                                           "num_running_reqs": int(time.time() < fake.zombie_until),
                                           "num_waiting_reqs": 0,
                                           "num_waiting_uncached_tokens": 0, "num_used_tokens": used,
                                           "num_total_tokens": used, "num_active_tokens": used,
                                           "max_total_num_tokens": 100000, "max_running_requests": 64,
                                           "token_usage": used / 100000, "gen_throughput": 0.0,
                                           "cache_hit_rate": 0.0, "utilization": 0.0}]})
                elif self.path == "/server_info":
                    self._json({"max_req_input_len": MAX_INPUT, "chunked_prefill_size": 256, "context_length": None})
                elif self.path == "/health":
                    self._json({})
                else:
                    self._json({"detail": "Not Found"}, 404)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    fake.log.append(("POST", self.path, 400))
                    return self._json({"object": "error", "message": "Invalid JSON", "code": 400}, 400)
                if self.path == "/abort_request":
                    fake.aborted.add(body["rid"])
                    ev = fake.waiting.get(body["rid"])
                    if ev:
                        ev.set()
                    return self._json({})
                if self.path == "/flush_cache":
                    return self._json({})
                if self.path != "/generate":
                    return self._json({"detail": "Not Found"}, 404)
                ids, sp = body.get("input_ids"), body.get("sampling_params", {})
                if sp.get("temperature", 1.0) > 0 and not body.get("stream"):
                    fake.sampled += 1
                n = int(sp.get("max_new_tokens", 16))
                with fake.lock:
                    fake.finished = True
                if not ids:
                    return self._json({"error": {"message": "The input_ids is empty"}}, 400)
                if len(ids) > MAX_INPUT:
                    return self._json({"error": {"message": f"Input length ({len(ids)} tokens) exceeds the maximum"}}, 400)
                if fake.error_mod and len(ids) % fake.error_mod == 0:
                    with fake.lock:
                        fake.errors += 1
                    return self._json({"error": {"message": "fake failure"}}, 500)
                if body.get("rid"):  # a long prompt that will be aborted
                    ev = fake.waiting.setdefault(body["rid"], threading.Event())
                    ev.wait(10)
                    return self._json({"text": "", "meta_info": {"id": body["rid"], "completion_tokens": 0,
                                       "finish_reason": {"type": "abort", "message": "Abort before prefill"}}})
                if body.get("stream"):
                    fake.zombie_until = time.time() + fake.zombie_s
                    fake.stall_until = time.time() + fake.stall_s
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    try:
                        for i in range(1, 50):
                            chunk = {"text": "x" * i, "meta_info": {"completion_tokens": i}}
                            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                            self.wfile.flush()
                            time.sleep(0.01)
                    except OSError:
                        fake.log.append(("POST", "/generate stream", -1))  # the client went away
                    self.close_connection = True
                    return
                time.sleep(max(0.0, fake.stall_until - time.time()))
                n = min(n, MAX_INPUT + 100 - len(ids))
                with fake.lock:
                    fake.generated += n
                self._json({"text": "x", "meta_info": {"id": "r", "prompt_tokens": len(ids), "completion_tokens": n,
                                                       "cached_tokens": 0, "finish_reason": {"type": "length", "length": n}}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def fake():
    servers = []

    def make(**kw):
        servers.append(FakeSGLang(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _soak(*args: str, tmp_path: Path) -> tuple[int, dict, str]:
    out = tmp_path / "report.json"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    r = subprocess.run([sys.executable, str(SOAK), *args, "--out", str(out)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert out.exists(), r.stderr[-3000:]
    return r.returncode, json.loads(out.read_text()), r.stdout


def test_bad_arguments_are_refused_before_any_request(tmp_path):
    """Refusals name the field; nothing is sent (the URL has no server) and no report is written."""
    for args, message in [(["--min-len", "10", "--max-len", "5"], "--min-len/--max-len: need 1 <= min-len <= max-len"),
                          (["--faults", "--rounds", "0"], "--rounds: got 0; need at least 1")]:
        r = subprocess.run([sys.executable, str(SOAK), "--url", "http://127.0.0.1:9", *args,
                            "--out", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "r.json").exists()


def test_soak_counts_what_the_server_did(fake, tmp_path):
    server = fake(error_mod=5)
    rc, rep, stdout = _soak("--url", server.url, "--requests", "60", "--concurrency", "8", "--min-len", "1",
                            "--max-len", "1500", "--max-new-tokens", "20", tmp_path=tmp_path)
    s = rep["summary"]
    assert s["requests"] == 60 and len(rep["per_request"]) == 60
    assert s["errors"] == server.errors > 0  # prompts of a length divisible by 5 failed, and only those
    assert all(("error" in r) == (r["prompt_len"] % 5 == 0) for r in rep["per_request"])
    assert all(r["error"].startswith("500: ") for r in rep["per_request"] if "error" in r)
    assert s["output_tokens"] == server.generated
    assert all(1 <= r["prompt_len"] <= 1500 and 1 <= r["max_new_tokens"] <= 20 for r in rep["per_request"])
    assert 0 < s["shared_prefix_requests"] < 60
    assert s["p50_latency_s"] <= s["p99_latency_s"]
    assert rep["gpu"] == "Fake GPU 80GB" and rep["date"] and "soak.py" in rep["command"]
    assert rep["pool_before"]["num_used_tokens"] == rep["pool_after"]["num_used_tokens"] == 0
    assert rep["pool_after"]["max_total_num_tokens"] == 100000
    assert rep["leak_check"] == {"checked": True, "used_before": 0, "used_after": 0, "leaked_tokens": 0, "ok": True}
    assert rc == 0 and "KV leak check" in stdout and "p99 latency" in stdout


def test_soak_reports_a_leak(fake, tmp_path):
    server = fake(leak_tokens=37)
    rc, rep, stdout = _soak("--url", server.url, "--requests", "5", "--concurrency", "2", "--max-len", "50",
                            tmp_path=tmp_path)
    assert rep["summary"]["errors"] == 0
    assert rep["leak_check"]["leaked_tokens"] == 37 and not rep["leak_check"]["ok"]
    assert rc == 1 and "LEAK: 37 tokens" in stdout


def test_faults_record_each_outcome(fake, tmp_path):
    server = fake()
    rc, rep, stdout = _soak("--url", server.url, "--faults", "--abort-delay", "0.2", "--fault-timeout", "10",
                            tmp_path=tmp_path)
    by = {f["fault"]: f for f in rep["faults"]}
    assert list(by) == ["empty_prompt", "prompt_over_context", "absurd_max_new_tokens", "malformed_json",
                        "disconnect_mid_stream", "abort_during_chunked_prefill"]
    assert by["empty_prompt"]["status"] == 400 and "input_ids is empty" in by["empty_prompt"]["detail"]
    assert by["prompt_over_context"]["status"] == 400 and "exceeds" in by["prompt_over_context"]["detail"]
    assert by["absurd_max_new_tokens"]["status"] == 200 and '"length"' in by["absurd_max_new_tokens"]["detail"]
    assert by["malformed_json"]["status"] == 400 and ("POST", "/generate", 400) in server.log
    assert by["disconnect_mid_stream"]["status"] == 200 and "read 3 chunks" in by["disconnect_mid_stream"]["detail"]
    abort = by["abort_during_chunked_prefill"]
    assert abort["abort_status"] == 200 and '"abort"' in abort["detail"] and len(server.aborted) == 1
    assert all(f["healthy_after"] for f in rep["faults"]) and rep["summary"]["healthy_after_all"]
    assert rep["leak_check"]["ok"] and rc == 0
    for _ in range(50):  # the fake's streaming handler notices the closed socket
        if ("POST", "/generate stream", -1) in server.log:
            break
        time.sleep(0.1)
    assert ("POST", "/generate stream", -1) in server.log
    assert rep["summary"]["rounds"] == 1 and rep["summary"]["slow_recoveries"] == [] == rep["summary"]["unsettled"]
    # the warm-up ran before the faults: a sampled and a greedy request, both answered
    assert rep["warmup"]["sampled_status"] == 200 == rep["warmup"]["greedy_status"] and "warm-up (s)" in stdout
    assert server.sampled == 1
    assert all(f["settled"] is True and 0 <= f["recover_s"] < 10 for f in rep["faults"])
    assert all(f["started_at"].startswith("20") and f["loads_after_fault"]["num_running_reqs"] == 0
               for f in rep["faults"])


@pytest.mark.slow
def test_faults_time_recovery_and_settling(fake, tmp_path):
    """A stream that keeps running after its client left shows as settle time; a server that
    stops answering for a while after it fails the run, naming the fault; rounds repeat it."""
    server = fake(zombie_s=1.5)
    rc, rep, stdout = _soak("--url", server.url, "--faults", "--abort-delay", "0.1", "--rounds", "2",
                            "--settle-timeout", "20", tmp_path=tmp_path)
    assert [(f["round"], f["fault"]) for f in rep["faults"]][5:7] == [(0, "abort_during_chunked_prefill"),
                                                                      (1, "empty_prompt")]
    disc = [f for f in rep["faults"] if f["fault"] == "disconnect_mid_stream"]
    assert len(disc) == 2 and all(f["settled"] and f["settle_s"] >= 1.0 for f in disc)
    assert all(f["loads_after_fault"]["num_running_reqs"] == 1 for f in disc)
    assert all(f["settle_s"] < 1.0 for f in rep["faults"] if f["fault"] != "disconnect_mid_stream")
    assert rep["summary"]["max_settle_s"] >= 1.0 and rc == 0 and "(round 1)" in stdout

    server = fake(stall_s=2.5)
    rc, rep, stdout = _soak("--url", server.url, "--faults", "--abort-delay", "0.1", "--slow-recovery", "1",
                            tmp_path=tmp_path)
    by = {f["fault"]: f for f in rep["faults"]}
    assert by["disconnect_mid_stream"]["healthy_after"] and by["disconnect_mid_stream"]["recover_s"] >= 2.0
    assert rep["summary"]["slow_recoveries"] == [f"disconnect_mid_stream (round 0): {by['disconnect_mid_stream']['recover_s']} s"]
    assert rc == 1 and "slow recoveries" in stdout

    server = fake(zombie_s=30)
    rc, rep, _ = _soak("--url", server.url, "--faults", "--abort-delay", "0.1", "--settle-timeout", "1",
                       tmp_path=tmp_path)
    # the zombie still runs during the fault after it, so that one is not idle afterwards either
    assert rep["summary"]["unsettled"] == ["disconnect_mid_stream (round 0)", "abort_during_chunked_prefill (round 0)"]
    assert rc == 1


def test_launch_refuses_a_port_that_already_answers(fake, tmp_path):
    """A server left running on the port would answer /health for the new one and be measured in
    its place: --launch stops at once, before starting anything."""
    server = fake()
    port = server.url.rsplit(":", 1)[1]
    r = subprocess.run([sys.executable, str(SOAK), "--launch", "--swaa-preset balanced", "--port", port,
                        "--server-log", str(tmp_path / "s.log"), "--out", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    assert r.returncode != 0 and f"port {port} already answers" in r.stderr
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "s.log").exists()  # nothing was started
