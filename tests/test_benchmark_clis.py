"""Benchmark scripts: --help works without a GPU (their runs happen on the GPU host)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


sys.path.insert(0, str(BENCH))
import bench_concurrency  # noqa: E402
import bench_e2e  # noqa: E402
import bench_one_batch  # noqa: E402
import common  # noqa: E402


@pytest.mark.parametrize("script", ["bench_attention_ops.py", "bench_e2e.py", "bench_one_batch.py",
                                    "bench_concurrency.py", "soak.py", "quality_niah.py", "greedy_margins.py"])
def test_help_runs_without_a_gpu_and_states_the_defaults(script):
    r = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(default: " in r.stdout


@pytest.mark.parametrize("main", [bench_e2e.main, bench_one_batch.main, bench_concurrency.main],
                         ids=["e2e", "one_batch", "concurrency"])
def test_settings_are_split_once_and_checked_before_anything_starts(main, capsys):
    """Every engine benchmark refuses a repeated or unknown setting with the field named, before it
    imports SGLang or starts an engine."""
    with pytest.raises(SystemExit) as e:
        main(["--settings", "vanilla,sink100-2k,vanilla"])
    assert e.value.code == 2 and "--settings: vanilla given more than once" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--settings", "vanilla,sink100-2k+fast"])
    assert ("--settings: unknown, repeated or misplaced suffix '+fast' in 'sink100-2k+fast'; allowed: '+evict', "
            "'+noevict', '+chunkN'") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--settings", "sink100"])
    err = capsys.readouterr().err
    assert "--settings: unknown setting 'sink100'; allowed: vanilla, vanilla-no-prefill-graph" in err
    assert "sink100-2k" in err  # the presets are listed
    with pytest.raises(SystemExit):
        main(["--settings", "vanilla+evict"])  # eviction is a SWAA switch
    assert "misplaced suffix '+evict' in 'vanilla+evict'" in capsys.readouterr().err
    for bad in ("sink100-2k+chunk", "sink100-2k+chunk0", "sink100-2k+chunk8k", "sink100-2k+chunk1+chunk2",
                "sink100-2k+evict+noevict"):
        with pytest.raises(SystemExit):
            main(["--settings", bad])
        assert f"in '{bad}'" in capsys.readouterr().err, bad


def test_a_setting_selects_the_same_backend_as_engine_kwargs_and_as_flags():
    """common.engine_kwargs (sglang.Engine) and common.server_flags (launch_server, the one_batch wrapper)
    describe one setting alike: the flags, parsed by the plugin's --swaa-* parser, give the config the
    Engine gets through json_model_override_args."""
    import argparse

    from swaa_sglang.cli import add_swaa_args, config_from_args
    from swaa_sglang.config import SWAAConfig

    for setting in ["sink100-2k", "sink100-2k+evict", "sink100-2k+noevict", "balanced", "full", "window-4k+evict"]:
        kwargs = common.engine_kwargs(setting)
        assert kwargs["attention_backend"] == "swaa"
        engine_config = SWAAConfig.from_dict(json.loads(kwargs["json_model_override_args"])["swaa"])
        parser = argparse.ArgumentParser()
        add_swaa_args(parser)
        assert config_from_args(parser.parse_args(common.server_flags(setting))) == engine_config, setting
        # a bare preset leaves the decision to the server (on where a layer is windowed)
        assert engine_config.evict_window is {"+evict": True, "+noevict": False}.get(setting[setting.find("+"):]
                                                                                    if "+" in setting else "")
    assert common.engine_kwargs("vanilla") == {"attention_backend": "flashinfer"}
    assert common.engine_kwargs("vanilla-no-prefill-graph") == {"attention_backend": "flashinfer",
                                                                "disable_prefill_cuda_graph": True}
    assert common.server_flags("vanilla-no-prefill-graph") == ["--attention-backend", "flashinfer",
                                                               "--disable-prefill-cuda-graph"]
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        common.server_flags("nope")


def test_chunk_suffix_sets_the_chunked_prefill_size_everywhere():
    """+chunkN reaches sglang.Engine and the server flags alike, on vanilla and SWAA settings, with eviction
    suffixes in either order; without it the benchmarks' 8192 stands."""
    import argparse

    from sglang.srt.server_args import ServerArgs

    assert common.chunked_prefill_size("sink100-2k") == common.DEFAULT_CHUNKED_PREFILL == 8192
    for setting, base, evict in [("sink100-2k+chunk32768", "sink100-2k", None),
                                 ("sink100-2k+noevict+chunk32768", "sink100-2k", False),
                                 ("sink100-2k+chunk32768+evict", "sink100-2k", True),
                                 ("vanilla+chunk32768", "vanilla", None)]:
        assert common.split_setting(setting) == (base, evict, 32768)
        assert common.chunked_prefill_size(setting) == 32768
        assert common.engine_kwargs(setting)["chunked_prefill_size"] == 32768
        flags = common.server_flags(setting)
        parser = argparse.ArgumentParser()
        ServerArgs.add_cli_args(parser)
        from swaa_sglang.cli import add_swaa_args
        add_swaa_args(parser)
        parsed = parser.parse_args(["--model-path", "m", *flags])
        assert parsed.chunked_prefill_size == 32768, setting
        if base != "vanilla":
            assert common.setting_config(setting) == common.setting_config(setting.replace("+chunk32768", ""))
    assert "chunked_prefill_size" not in common.engine_kwargs("sink100-2k")


def test_render_bench_computes_ratios_from_the_json(tmp_path):
    """The renderer's speed-ups come from the measured times (two made-up rows, checked by hand)."""
    import json

    ops = {"meta": {"gpu": "G", "date": "d", "flashinfer": "f", "torch": "t", "heads": [32, 8, 128]},
           "rows": [{"kind": "prefill", "backend": "fa2", "tokens": 131072, "window": 2048, "sinks": 100,
                     "full_ms": 400.0, "window_ms": 10.0, "swaa_ms": 12.0, "swaa_fused_ms": 11.0},
                    {"kind": "decode", "batch": 32, "context": 32768, "full_ms": 1.5, "swaa_ms": 0.1}]}
    offline = {"requests": 8, "prompt_tokens": 32768, "output_tokens": 256, "seconds": 16.0}
    e2e = {"meta": {"gpu": "G", "date": "d", "model": "/x/qwen3-4b",
                    "argv": ["bench_e2e.py", "--settings", "vanilla,sink100-2k,balanced"]},
           "rows": [{"setting": "vanilla", "single": [{"prompt_tokens": 131072, "ttft_s": 15.0, "decode_tok_s": 90.0}],
                     "offline": {**offline, "output_tok_s": 128.0}},
                    {"setting": "sink100-2k", "single": [{"prompt_tokens": 131072, "ttft_s": 2.5,
                                                          "decode_tok_s": 225.0}],
                     "offline": {**offline, "seconds": 8.0, "output_tok_s": 256.0}}]}
    (tmp_path / "ops.json").write_text(json.dumps(ops))
    (tmp_path / "e2e.json").write_text(json.dumps(e2e))
    out = tmp_path / "speed"
    r = subprocess.run([sys.executable, str(BENCH / "render_bench.py"), "--ops", str(tmp_path / "ops.json"),
                        "--e2e", str(tmp_path / "e2e.json"), "--out", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    md = (tmp_path / "speed.md").read_text()
    assert "| fa2 | 128K | 400.00 | 10.00 | 12.00 | 11.00 | 1.100 | 36.4 |" in md
    assert "| 32 x 32K | 1.500 | 0.100 | 15.0 |" in md
    assert "| sink100-2k | 128K | 2.500 | 6.00x | 225.0 | 2.50x |" in md
    assert "| sink100-2k | offline 8 x 32K -> 256 | 8.0 s total | | 256.0 | 2.00x (output tok/s) |" in md
    assert "| vanilla | offline 8 x 32K -> 256 | 16.0 s total | | 128.0 | - |" in md
    assert "`sink100-2k` window 2048 + 100 sinks" in md and "`vanilla` SGLang's flashinfer backend" in md
    # a run cut short: the setting asked for without results is named, the measured ones are not
    assert "Not measured: `balanced` (in the command" in md and "`sink100-2k`, " not in md.split("Not measured")[1]
    from render_bench import e2e_markdown, e2e_speedups, offline_speedup
    # the parsed list bench_e2e now records wins over argv (which may lack --settings: the defaults)
    e2e_now = {**e2e, "meta": {**e2e["meta"], "argv": ["bench_e2e.py"], "settings": ["vanilla", "window-2k"]}}
    assert "Not measured: `window-2k` (in the command" in "\n".join(e2e_markdown(e2e_now))
    e2e_all = {**e2e, "meta": {**e2e["meta"], "argv": ["bench_e2e.py", "--settings=vanilla,sink100-2k"]}}
    assert "Not measured" not in "\n".join(e2e_markdown(e2e_all))
    assert r.stdout.count("# Speed: SWAA") == 1  # the table is printed once
    assert (tmp_path / "speed_ops.png").stat().st_size > 1000 and (tmp_path / "speed_e2e.png").stat().st_size > 1000
    # offline speed-up only against vanilla's same workload
    assert offline_speedup({**offline, "requests": 16, "output_tok_s": 300.0}, {**offline, "output_tok_s": 100.0}) is None
    assert offline_speedup({**offline, "output_tok_s": 300.0}, {**offline, "output_tok_s": 100.0}) == 3.0
    # the bars: each setting at the longest prompt vanilla also ran (8K here; 128K has no vanilla row)
    e2e["rows"][0]["single"] = [{"prompt_tokens": 8192, "ttft_s": 0.2, "decode_tok_s": 100.0}]
    e2e["rows"][1]["single"].insert(0, {"prompt_tokens": 8192, "ttft_s": 0.1, "decode_tok_s": 110.0})
    e2e["rows"].append({"setting": "window-2k", "single": [{"prompt_tokens": 65536, "ttft_s": 1.0, "decode_tok_s": 1.0}]})
    assert e2e_speedups(e2e) == [{"setting": "sink100-2k", "prompt_tokens": 8192, "ttft": 2.0, "decode": 1.1}]


def test_concurrency_peak_and_settings():
    from bench_concurrency import peak_overlap
    from common import setting_override_json as _config_json

    assert peak_overlap([]) == 0
    assert peak_overlap([(0, 5), (1, 2), (2, 3), (4, 6)]) == 2  # touching intervals do not overlap
    assert peak_overlap([(0, 10)] * 3 + [(10, 11)]) == 3
    import json

    assert json.loads(_config_json("sink100-2k+evict"))["swaa"]["evict_window"] is True
    assert json.loads(_config_json("sink100-2k+noevict"))["swaa"]["evict_window"] is False
    assert "evict_window" not in json.loads(_config_json("sink100-2k"))["swaa"]
    with pytest.raises(ValueError, match=r"settings: unknown, repeated or misplaced suffix '\+fast'"):
        _config_json("sink100-2k+fast")


def test_concurrency_drive_counts_unfinished_tokens_at_the_time_limit():
    """A request still decoding when --time-limit passes keeps the tokens it streamed."""
    import asyncio

    from bench_concurrency import _drive, summarize

    class FakeEngine:  # a request [n] streams n tokens, one every 10 ms; [25] then never ends
        async def async_generate(self, input_ids, sampling_params, stream):
            async def gen():
                n = input_ids[0]
                for k in range(1, n + 1):
                    await asyncio.sleep(0.01)
                    yield {"meta_info": {"completion_tokens": k}}
                if n == 25:
                    await asyncio.sleep(3600)
            return gen()

    ticks = []
    rows, elapsed, partial = asyncio.run(_drive(FakeEngine(), [[1], [3], [25]], 8, time_limit=1.5,
                                                progress=ticks.append))
    assert partial and len(ticks) == 2
    assert [r["finished"] for r in rows] == [True, True, False]
    assert [r["output_tokens"] for r in rows] == [1, 3, 25]
    s = summarize(rows, elapsed)
    assert s["completed"] == 2 and s["output_tokens"] == 29
    assert s["peak_concurrent_decoding"] == 2  # request 0's first and last token coincide: zero-length span
    # finished requests only: their 1 + 3 tokens over the time the later of them ended
    assert s["finished_tok_s"] == pytest.approx(4 / rows[1]["last_token_s"])
    assert s["finished_tok_s"] > s["output_tok_s"]  # not diluted by the wait on the unfinished request


def test_concurrency_drive_samples_the_scheduler_once_more_at_the_end():
    """Prefill that happens after the last periodic sample still counts: _drive takes a final
    snapshot when the requests are done (a request in chunked prefill is neither running nor
    waiting, so the last periodic sample can miss its last chunks)."""
    import asyncio

    from bench_concurrency import _drive, summarize_loads

    class Loads:
        prefilled = 0

        async def get_loads(self, include):
            d = {"num_running_reqs": 0, "total_prefill_uncached_tokens": self.prefilled}
            return [type("Snap", (), {"to_dict": lambda _self, sections: d})()]

    class FakeEngine:
        tokenizer_manager = Loads()

        async def async_generate(self, input_ids, sampling_params, stream):
            async def gen():
                await asyncio.sleep(0.05)  # prefilled well after the first (and only periodic) sample
                self.tokenizer_manager.prefilled += len(input_ids)
                yield {"meta_info": {"completion_tokens": 1}}
            return gen()

    samples: list[dict] = []
    asyncio.run(_drive(FakeEngine(), [[1] * 30, [2] * 50], 1, None, progress=lambda _: None, sample_every=60,
                       samples=samples))
    assert [s["total_prefill_uncached_tokens"] for s in samples] == [0, 80]
    assert summarize_loads(samples, prompt_tokens=80)["prefill_per_prompt_token"] == 1.0


def test_concurrency_load_summary_shows_redone_prefill():
    """Prefill counted twice over (retracted requests prefilled again) shows as 2.0 per prompt token."""
    from bench_concurrency import summarize_loads
    samples = [{"num_running_reqs": r, "total_prefill_uncached_tokens": t}
               for r, t in [(0, 500), (4, 2500), (6, 4500), (2, 6500)]]
    assert summarize_loads(samples, prompt_tokens=3000) == {"peak_running_reqs": 6, "prefill_per_prompt_token": 2.0}
    assert summarize_loads([], 10) == {}


def test_concurrency_phases_share_one_engine_and_start_from_an_empty_cache(monkeypatch):
    """--requests 2,3: one engine, warmed up outside the timings; each phase's requests meet an empty
    prefix cache (no hits on the warm-up or an earlier phase); one row per phase as it ends; a failed
    flush stops the run instead of measuring on a full pool; the engine is shut down either way."""
    import argparse
    import asyncio
    import time

    import bench_concurrency

    cold_s = 0.3  # the first generation on a fresh engine pays this (kernel compiles)

    class FakeScheduler:  # flush, requests running, prompt tokens prefilled so far, tokens in the prefix cache
        def __init__(self, flush_ok: bool):
            self.running = self.prefilled = self.cached = 0
            self.flush_ok = flush_ok

        async def flush_cache(self, timeout_s):
            assert timeout_s > 0 and self.running == 0  # SGLang flushes an idle scheduler only
            if self.flush_ok:
                self.cached = 0
            return type("Out", (), {"success": self.flush_ok, "message": ""})()

        async def get_loads(self, include):
            d = {"num_running_reqs": self.running, "num_waiting_reqs": 0, "num_used_tokens": 0, "token_usage": 0.0,
                 "total_prefill_uncached_tokens": self.prefilled}
            return [type("Snap", (), {"to_dict": lambda _self, sections: d})()]

    class FakeEngine:
        def __init__(self, flush_ok=True):
            self.loop, self.tokenizer_manager = asyncio.new_event_loop(), FakeScheduler(flush_ok)
            self.warm, self.closed, self.cache_seen = False, False, []

        def get_server_info(self):
            return {"max_total_num_tokens": 1000, "swa_max_total_num_tokens": 300, "version": "x"}

        def _first_use(self):
            if not self.warm:
                time.sleep(cold_s)
                self.warm = True

        def generate(self, input_ids, sampling_params):
            self._first_use()
            self.tokenizer_manager.cached += len(input_ids)

        async def async_generate(self, input_ids, sampling_params, stream):
            self._first_use()
            sched = self.tokenizer_manager
            self.cache_seen.append(sched.cached)  # what this prompt could share with earlier work
            sched.running += 1
            sched.prefilled += len(input_ids)

            async def gen():
                for k in range(1, sampling_params["max_new_tokens"] + 1):
                    await asyncio.sleep(0.02)
                    yield {"meta_info": {"completion_tokens": k}}
                sched.running -= 1
                sched.cached += len(input_ids)
            return gen()

        def shutdown(self):
            self.closed = True
            self.loop.close()

    engines, contexts = [], []

    def start_engine(setting, model, context_len, mem, flush_ok=True):
        contexts.append(context_len)
        engines.append(FakeEngine(flush_ok))
        return engines[-1]

    monkeypatch.setattr(bench_concurrency, "start_engine", start_engine)
    a = argparse.Namespace(model="m", prompt_len=8, output_len=4, mem=0.5, time_limit=None, requests=[2, 3],
                           sample_every=0.005, context_len=None)
    rows = []
    bench_concurrency.measure("sink100-2k+evict", a, rows.append)
    assert len(engines) == 1 and contexts == [8 + 4 + 64]  # the context sizes the pools: prompt + output + 64
    [engine] = engines
    assert engine.cache_seen == [0] * 5 and engine.closed
    assert rows[0]["warmup_s"] >= cold_s > rows[0]["seconds"]  # first-use costs stay out of the phase
    assert [(r["requests"], r["completed"], r["output_tokens"]) for r in rows] == [(2, 2, 8), (3, 3, 12)]
    assert rows[0]["pool_info"] == {"max_total_num_tokens": 1000, "swa_max_total_num_tokens": 300}
    # the scheduler's samples: all of a phase ran at once, each prompt token prefilled once
    assert [r["peak_running_reqs"] for r in rows] == [2, 3]
    assert [r["prefill_per_prompt_token"] for r in rows] == [1.0, 1.0]

    monkeypatch.setattr(bench_concurrency, "start_engine", lambda *args: start_engine(*args, flush_ok=False))
    with pytest.raises(RuntimeError, match="flush_cache before the x2 phase failed"):
        bench_concurrency.measure("vanilla", a, rows.append)
    assert engines[-1].cache_seen == [] and engines[-1].closed and len(rows) == 2


def test_concurrency_context_len_must_hold_the_request():
    r = subprocess.run([sys.executable, str(BENCH / "bench_concurrency.py"), "--prompt-len", "16384",
                        "--output-len", "8192", "--context-len", "20000"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "--context-len: must hold --prompt-len + --output-len = 24576; got 20000" in r.stderr


class _FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _StreamingEngine:
    """sglang.Engine.generate(stream=True) stand-in: a prefill of `prefill_s`, then one chunk per
    `chunk_tokens` decoded tokens every `chunk_tokens * step_s`, on a fake clock."""

    def __init__(self, clock: _FakeClock, prefill_s: float, step_s: float, first_tokens: int = 1, chunk_tokens: int = 1):
        self.clock, self.prefill_s, self.step_s = clock, prefill_s, step_s
        self.first_tokens, self.chunk_tokens = first_tokens, chunk_tokens
        self.calls = []

    def generate(self, input_ids, sampling_params, stream=False):
        assert stream and isinstance(input_ids[0], int)
        self.calls.append((len(input_ids), sampling_params))
        max_new = sampling_params["max_new_tokens"]
        self.clock.now += self.prefill_s
        n = min(self.first_tokens, max_new)
        yield {"meta_info": {"completion_tokens": n}}
        while n < max_new:
            step = min(self.chunk_tokens, max_new - n)
            self.clock.now += step * self.step_s
            n += step
            yield {"meta_info": {"completion_tokens": n}}


def test_e2e_decode_rate_comes_from_the_same_streamed_request():
    """TTFT is the first chunk's time; decode tok/s counts only what streamed after it, so prefill
    time (15 s here, and its jitter) never enters the decode rate, whatever the stream interval."""
    from bench_e2e import stream_timing
    clock = _FakeClock()
    engine = _StreamingEngine(clock, prefill_s=15.0, step_s=0.005)
    ttft, rate = stream_timing(engine, list(range(1000)), 129, clock=clock)
    assert ttft == pytest.approx(15.0) and rate == pytest.approx(200.0)
    assert engine.calls == [(1000, {"temperature": 0, "max_new_tokens": 129, "ignore_eos": True})]
    # a stream interval of 8 and a first chunk of 2 tokens: the same rate
    engine = _StreamingEngine(clock, prefill_s=3.0, step_s=0.004, first_tokens=2, chunk_tokens=8)
    ttft, rate = stream_timing(engine, [1, 2, 3], 130, clock=clock)
    assert ttft == pytest.approx(3.0) and rate == pytest.approx(250.0)
    with pytest.raises(RuntimeError, match="no decode after the first chunk"):
        stream_timing(_StreamingEngine(clock, 1.0, 0.01), [1], 1, clock=clock)


FAKE_ONE_BATCH = r'''
import json, os, pathlib, sys
a = sys.argv[1:]
name = a[a.index("--run-name") + 1]
lens = []
i = a.index("--input-len") + 1
while i < len(a) and not a[i].startswith("--"):
    lens.append(int(a[i])); i += 1
if name == "window-4k":  # this setting's engine fails
    print("Traceback: the engine could not start"); sys.exit(3)
stock = name.startswith("vanilla")  # vanilla, vanilla-no-prefill-graph: SGLang's flashinfer backend
assert ("--attention-backend" in a) == stock and ("--swaa-preset" in a) != stock
assert ("--disable-prefill-cuda-graph" in a) == (name == "vanilla-no-prefill-graph")
fast = name != "vanilla"
slower = 0.0  # FAKE_COUNTER: each start of the tool is 0.1 ms slower per step than the one before
if os.environ.get("FAKE_COUNTER"):
    c = pathlib.Path(os.environ["FAKE_COUNTER"])
    starts = int(c.read_text()) if c.exists() else 0
    c.write_text(str(starts + 1))
    slower = starts * 1e-4
with open(a[a.index("--result-filename") + 1], "a") as f:
    for n in lens:
        f.write(json.dumps({"run_name": name, "batch_size": 1, "input_len": n, "output_len": 16,
                            "prefill_latency": n / 1e4 / (4 if fast else 1),
                            "median_decode_latency": (0.004 if fast else 0.005) + slower}) + "\n")
'''


def test_bench_one_batch_runs_each_setting_and_computes_speedups(tmp_path):
    """One process per setting through the wrapped tool (a fake here); the speed-ups are vanilla's time
    over the setting's at the same prompt length; a setting that fails is recorded, the rest still run."""
    fake = tmp_path / "fake_one_batch.py"
    fake.write_text(FAKE_ONE_BATCH)
    out = tmp_path / "ob.json"
    r = subprocess.run([sys.executable, str(BENCH / "bench_one_batch.py"), "--settings", "vanilla,window-4k,balanced",
                        "--lengths", "8192,131072", "--bench-command", f"{sys.executable} {fake}", "--no-progress",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr  # one setting failed
    result = json.loads(out.read_text())
    assert [(x["run_name"], x["input_len"]) for x in result["rows"]] == [
        ("vanilla", 8192), ("vanilla", 131072), ("balanced", 8192), ("balanced", 131072)]
    assert all("round" not in x for x in result["rows"]) and "spread" not in result  # one round: rows as SGLang wrote them
    assert "window-4k: one_batch exited 3 with 0 result rows" in result["failed"]["window-4k"]
    assert "the engine could not start" in result["failed"]["window-4k"]
    assert (tmp_path / "ob.window-4k.log").read_text().startswith("$ ")
    line = next(x for x in r.stdout.splitlines() if x.startswith("balanced") and "131072" in x)
    assert line.split() == ["balanced", "131072", "3.277", "4.00x", "4.000", "250.0", "1.25x"]


@pytest.mark.slow
def test_bench_one_batch_rounds_alternate_settings_and_report_the_spread(tmp_path):
    """--rounds 3: A B A B A B, one process each; speed-ups within a round; per setting the median
    step and its range over the engines (the fake slows 0.1 ms per start: hand-checked numbers)."""
    fake = tmp_path / "fake_one_batch.py"
    fake.write_text(FAKE_ONE_BATCH)
    out = tmp_path / "ob.json"
    cmd = [sys.executable, str(BENCH / "bench_one_batch.py"), "--lengths", "32768", "--no-progress",
           "--bench-command", f"{sys.executable} {fake}", "--out", str(out)]
    env = {**os.environ, "FAKE_COUNTER": str(tmp_path / "starts")}
    r = subprocess.run([*cmd, "--settings", "vanilla,vanilla-no-prefill-graph", "--rounds", "3"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    # starts 0..5 in order: vanilla r1, other r1, vanilla r2, ...
    assert [(x["run_name"], x["round"], round(1000 * x["median_decode_latency"], 3)) for x in result["rows"]] == [
        ("vanilla", 1, 5.0), ("vanilla-no-prefill-graph", 1, 4.1), ("vanilla", 2, 5.2),
        ("vanilla-no-prefill-graph", 2, 4.3), ("vanilla", 3, 5.4), ("vanilla-no-prefill-graph", 3, 4.5)]
    assert {p.name for p in tmp_path.glob("ob.*.log")} == {
        f"ob.{s}.r{k}.log" for s in ("vanilla", "vanilla-no-prefill-graph") for k in (1, 2, 3)}
    # round 2: vanilla 5.2 ms against 4.3 ms -> 1.21x (not against round 1's 5.0 ms: 1.16x)
    line = next(x for x in r.stdout.splitlines() if x.startswith("vanilla-no-prefill-graph 2 "))
    assert line.split()[-1] == "1.21x"
    # per-round speed-ups 5.0/4.1, 5.2/4.3, 5.4/4.5: median 5.2/4.3
    assert result["spread"] == [
        {"setting": "vanilla", "prompt": 32768, "engines": 3, "median_ms": pytest.approx(5.2), "min_ms": pytest.approx(5.0),
         "max_ms": pytest.approx(5.4), "median_speedup": None},
        {"setting": "vanilla-no-prefill-graph", "prompt": 32768, "engines": 3, "median_ms": pytest.approx(4.3),
         "min_ms": pytest.approx(4.1), "max_ms": pytest.approx(4.5), "median_speedup": pytest.approx(5.2 / 4.3)}]
    assert "vanilla-no-prefill-graph   32768        3      4.300    4.100    4.500    9.3%     1.21x" in r.stdout
    # --baseline: speed-ups against another setting, within each round (starts 6-9; both settings are
    # 4.0 ms in the fake, plus 0.1 ms per start)
    r = subprocess.run([*cmd, "--settings", "vanilla-no-prefill-graph,full", "--baseline", "vanilla-no-prefill-graph",
                        "--rounds", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    assert result["meta"]["baseline"] == "vanilla-no-prefill-graph"
    full = next(x for x in result["spread"] if x["setting"] == "full")
    # round 1: 4.6 ms (start 6) against 4.7 ms (start 7); round 2: 4.8 against 4.9
    assert full["median_speedup"] == pytest.approx(((4.6 / 4.7) + (4.8 / 4.9)) / 2)
    line = next(x for x in r.stdout.splitlines() if x.startswith("full ") and " 2 " in x[:30])
    assert line.split()[-1] == f"{4.8 / 4.9:.2f}x"
    # a setting named twice is refused before anything runs, pointing at --rounds
    r = subprocess.run([*cmd, "--settings", "vanilla,full,vanilla"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "--settings: vanilla given more than once" in r.stderr and "--rounds" in r.stderr
    r = subprocess.run([*cmd, "--rounds", "0"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "--rounds: 0; allowed: 1 or more" in r.stderr
    r = subprocess.run([*cmd, "--settings", "full", "--baseline", "balanced"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 2 and "--baseline: 'balanced' is not among --settings (full)" in r.stderr
    assert int((tmp_path / "starts").read_text()) == 10  # the refused runs started nothing


@pytest.mark.slow
def test_e2e_refuses_lengths_the_model_config_cannot_hold_before_any_engine_starts(monkeypatch):
    # the Qwen3-8B shape (max_position_embeddings 131072): a 131072-token prompt plus 256 decode tokens
    # does not fit, and SGLang itself would say so only once its launcher is up
    r = subprocess.run([sys.executable, str(BENCH / "bench_e2e.py"), "--model", str(BENCH / "models" / "qwen3-8b"),
                        "--lengths", "8192,131072", "--decode-tokens", "256"],
                       capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"})
    assert r.returncode == 2
    assert "needs a context of 131392" in r.stderr and "allows 131072 (SGLang's context length for it" in r.stderr
    assert "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1" in r.stderr
    from bench_e2e import context_needed, context_refusal
    model = str(BENCH / "models" / "qwen3-8b")
    monkeypatch.delenv("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", raising=False)
    assert context_needed([8192, 131072 - 320], 256) == 131072
    assert context_refusal(model, 131072) is None  # exactly the limit fits
    assert context_refusal(model, 131073) is not None
    assert context_refusal(str(BENCH / "models" / "qwen3-4b-2507"), 131392) is None  # 262144 there
    monkeypatch.setenv("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "1")
    assert context_refusal(model, 131073) is None


def test_render_bench_layer_mix_estimate_from_vanilla_and_all_sliding_rows():
    """balanced (odd layers full: 18 of Qwen3-4B's 36) is estimated as half vanilla's TTFT plus half
    sink100-2k's, half-full-4k from sink100-4k (its window); presets without a same-window
    all-sliding row in the run, or without full layers, get no estimate."""
    from render_bench import layer_mix_estimate, layer_mix_markdown

    def row(setting, ttft):
        return {"setting": setting, "single": [{"prompt_tokens": 131072, "ttft_s": ttft, "decode_tok_s": 1.0}]}

    # fa-decode-2k (all sliding, W2048 k100, FA decode) comes first, but the reference is still sink100-2k
    e2e = {"meta": {"model": "/tmp/queue/tree/benchmarks/models/qwen3-4b-2507"},
           "rows": [row("vanilla", 16.0), row("full", 16.1), row("fa-decode-2k", 2.2), row("sink100-2k", 2.0),
                    row("balanced", 9.9), row("half-full-4k", 9.5), row("quarter-full-2k", 6.0), row("window-4k", 2.5)]}
    est = {r["setting"]: r for r in layer_mix_estimate(e2e)}
    assert set(est) == {"balanced", "quarter-full-2k"}  # no sink100-4k row: no reference for half-full-4k
    assert est["balanced"]["reference"] == "sink100-2k"
    assert est["balanced"]["full_layers"] == 18 and est["balanced"]["estimate_s"] == 9.0
    assert est["balanced"]["bound"] == 16.0 / 9.0
    assert est["quarter-full-2k"]["full_layers"] == 9 and est["quarter-full-2k"]["estimate_s"] == 0.25 * 16 + 0.75 * 2
    assert "| balanced | 128K | 18/36 | sink100-2k | 9.900 | 9.000 | 1.100 | 1.78x |" in layer_mix_markdown(e2e)
    e2e["rows"].append(row("sink100-4k", 3.0))
    est = {r["setting"]: r for r in layer_mix_estimate(e2e)}
    assert est["half-full-4k"]["reference"] == "sink100-4k" and est["half-full-4k"]["estimate_s"] == 0.5 * 16 + 0.5 * 3
    # without sink100-2k, fa-decode-2k (same window and sinks, every layer sliding) is the reference
    e2e["rows"] = [r for r in e2e["rows"] if r["setting"] != "sink100-2k"]
    est = {r["setting"]: r for r in layer_mix_estimate(e2e)}
    assert est["balanced"]["reference"] == "fa-decode-2k" and est["balanced"]["estimate_s"] == 0.5 * 16 + 0.5 * 2.2
    # without any all-sliding reference there is nothing to estimate from
    e2e["rows"] = [r for r in e2e["rows"] if r["setting"] not in ("fa-decode-2k", "sink100-4k")]
    assert layer_mix_estimate(e2e) == [] and layer_mix_markdown(e2e) == []
