"""benchmarks/bench_prefix_cache.py: the workloads, the reusable bound, the metrics and the command
line on CPU (a fake engine stands in for sglang.Engine); one GPU smoke run, marked ``gpu``."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import bench_prefix_cache as bpc  # noqa: E402


# -- the reusable bound ---------------------------------------------------------------------------
def test_common_prefix_len_across_block_boundaries():
    assert bpc.common_prefix_len([], [1, 2]) == 0
    assert bpc.common_prefix_len([1, 2, 3], [1, 2, 3]) == 3
    assert bpc.common_prefix_len([1, 2, 3], [1, 2]) == 2
    a = list(range(20))
    for mismatch in (0, 3, 4, 5, 11, 19):  # before, at and after the 4-id block edges
        b = a.copy()
        b[mismatch] = -1
        assert bpc.common_prefix_len(a, b, block=4) == mismatch
    assert bpc.common_prefix_len(a, a[:13], block=4) == 13


def test_bound_of_a_hand_made_chat_with_page_alignment():
    """One chat, 3 turns: first prompt 5 ids, 3 output ids a turn, 2 user ids a turn.
    Turn 2 (10 ids) can reuse turn 1's prompt and its output but the last id: 5 + 2 = 7.
    Turn 3 (15 ids) can reuse turn 2's prompt and its output but the last id: 10 + 2 = 12."""
    p1 = [1, 2, 3, 4, 5]
    o1 = [6, 7, 8]
    p2 = p1 + o1 + [9, 10]
    o2 = [11, 12, 13]
    p3 = p2 + o2 + [14, 15]
    waves = [[(p1, o1)], [(p2, o2)], [(p3, [16, 17, 18])]]
    assert bpc.reusable_bound(waves, page_size=1) == [[0], [7], [12]]
    assert bpc.reusable_bound(waves, page_size=4) == [[0], [4], [12]]  # 7 -> 4, 12 stays
    assert bpc.reusable_bound(waves, page_size=8) == [[0], [0], [8]]
    assert bpc.reusable_bound(waves, page_size=16) == [[0], [0], [0]]


def test_bound_of_a_hand_made_shared_prompt_in_waves():
    """System prompt of 6 ids, suffixes of 2, waves of 2, 2, 1. In the first wave the first request
    finds nothing; the second finds the first one's prompt (sent with it): 6 shared ids. Later waves
    find the 6 ids too, and no more (the suffixes and the outputs differ)."""
    system = [1, 2, 3, 4, 5, 6]
    prompts = [system + [100 + i, 200 + i] for i in range(5)]
    outputs = [[300 + i, 301 + i] for i in range(5)]
    waves = [[(prompts[0], outputs[0]), (prompts[1], outputs[1])], [(prompts[2], outputs[2]), (prompts[3], outputs[3])],
             [(prompts[4], outputs[4])]]
    assert bpc.reusable_bound(waves, page_size=1) == [[0, 6], [6, 6], [6]]
    assert bpc.reusable_bound(waves, page_size=4) == [[0, 4], [4, 4], [4]]
    assert bpc.reusable_bound(waves, page_size=3) == [[0, 6], [6, 6], [6]]  # 6 is whole pages of 3


def test_bound_holds_no_last_output_id_no_same_wave_output_and_leaves_the_last_prompt_token():
    # the same prompt again, a wave later: all of it is cached, but the engine recomputes the last token
    assert bpc.reusable_bound([[([1, 2, 3, 4], [5, 6])], [([1, 2, 3, 4], [7])]], 1) == [[0], [3]]
    assert bpc.reusable_bound([[([1, 2, 3, 4], [5, 6])], [([1, 2, 3, 4], [7])]], 2) == [[0], [2]]
    # the previous prompt and its whole output: the last output id has no KV anywhere
    assert bpc.reusable_bound([[([1, 2], [3, 4, 5])], [([1, 2, 3, 4, 5, 9], [0])]], 1) == [[0], [4]]
    # the same extension within one wave: the first request's output does not exist yet, its prompt does
    assert bpc.reusable_bound([[([1, 2], [3, 4, 5]), ([1, 2, 3, 4, 5, 9], [0])]], 1) == [[0, 2]]
    # the longest match over everything held counts, not the latest request's
    waves = [[([1, 2, 3, 4, 5, 6], [7])], [([9, 9, 9], [8])], [([1, 2, 3, 4, 0], [1])]]
    assert bpc.reusable_bound(waves, 1) == [[0], [0], [4]]
    assert bpc.reusable_bound([], 1) == []


# -- the workloads ----------------------------------------------------------------------------------
class FakeSender:
    """A send_wave stand-in: records the waves, answers each prompt with ``output_len`` made-up ids
    (outside the prompts' id range) and fixed timings."""

    def __init__(self, output_len: int, offset: int = 0):
        self.output_len, self.offset, self.waves, self.count = output_len, offset, [], 0

    def __call__(self, prompts):
        self.waves.append([list(p) for p in prompts])
        results = []
        for _ in prompts:
            self.count += 1
            ids = [500_000 + self.offset + 1000 * self.count + k for k in range(self.output_len)]
            results.append({"output_ids": ids, "cached_tokens": 0, "ttft_s": 0.1, "latency_s": 1.0})
        return results


def test_multi_turn_prompts_extend_the_conversation_exactly():
    sender = FakeSender(output_len=4)
    seen = []
    waves = bpc.run_multi_turn(sender, random.Random(7), conversations=3, turns=4, first_len=10, user_len=5,
                               on_wave=lambda t, wave: seen.append((t, len(wave))))
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert [[r["prompt"] for r in w] for w in waves] == sender.waves  # what was sent is what is recorded
    first = [r["prompt"] for r in waves[0]]
    assert [len(p) for p in first] == [10, 10, 10]
    assert len({p[0] for p in first}) == 3  # conversations share no prefix
    for turn in range(1, 4):
        for conv in range(3):
            prev, cur = waves[turn - 1][conv], waves[turn][conv]
            grown = prev["prompt"] + prev["output_ids"]
            assert cur["prompt"][:len(grown)] == grown
            user = cur["prompt"][len(grown):]
            assert len(user) == 5 and all(bpc.TOKEN_LO <= t < bpc.TOKEN_HI for t in user)
        assert [len(r["prompt"]) for r in waves[turn]] == [10 + turn * (4 + 5)] * 3
    # bound: turn t >= 2 reuses the previous prompt and 3 of its 4 output ids
    bounds = bpc.reusable_bound([[(r["prompt"], r["output_ids"]) for r in w] for w in waves], 1)
    assert bounds == [[0] * 3] + [[10 + (t - 1) * 9 + 3] * 3 for t in range(1, 4)]


def test_heads_are_redrawn_until_no_two_lists_start_alike():
    """A repeated first id would let two chats (or two suffixes) share a prefix by chance."""
    class Scripted:  # randrange returns the scripted ids in turn
        def __init__(self, ids):
            self.ids = iter(ids)

        def randrange(self, lo, hi):
            return next(self.ids)

    assert bpc.distinct_heads(Scripted([5, 7, 5, 8, 5, 9, 3, 4]), 3, 2) == [[5, 7], [9, 8], [3, 4]]


def test_multi_turn_draws_do_not_depend_on_the_outputs():
    """Settings generate different ids; one seed still gives them the same first prompts and user messages."""
    a = bpc.run_multi_turn(FakeSender(4), random.Random(3), 2, 3, 10, 5)
    b = bpc.run_multi_turn(FakeSender(4, offset=77), random.Random(3), 2, 3, 10, 5)
    assert [r["prompt"] for r in a[0]] == [r["prompt"] for r in b[0]]
    for turn in (1, 2):
        for ra, rb in zip(a[turn], b[turn]):
            assert ra["prompt"][-5:] == rb["prompt"][-5:] and ra["prompt"] != rb["prompt"]


def test_shared_prompt_waves_share_exactly_the_system_prompt():
    sender = FakeSender(output_len=2)
    waves = bpc.run_shared_prompt(sender, random.Random(1), system_len=12, suffix_len=3, requests=8, concurrency=3)
    assert [len(w) for w in waves] == [3, 3, 2] and sender.waves == [[r["prompt"] for r in w] for w in waves]
    prompts = [r["prompt"] for w in waves for r in w]
    assert all(len(p) == 15 and p[:12] == prompts[0][:12] for p in prompts)
    assert len({p[12] for p in prompts}) == 8  # suffixes differ from their first id on
    assert bpc.reusable_bound([[(r["prompt"], r["output_ids"]) for r in w] for w in waves], 5) == [[0, 10, 10]] + \
        [[10] * 3, [10] * 2]
    assert [len(w) for w in bpc.run_shared_prompt(FakeSender(1), random.Random(1), 4, 1, 5, 0)] == [5]  # all at once
    assert bpc.wave_slices(4, 4) == [range(0, 4)] and bpc.wave_slices(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]


# -- metrics ----------------------------------------------------------------------------------------
def test_percentile_interpolates_between_ranks():
    assert bpc.percentile([], 50) is None
    assert bpc.percentile([2.0], 90) == 2.0
    assert bpc.percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert bpc.percentile([4.0, 1.0, 3.0, 2.0], 90) == pytest.approx(3.7)  # 1 + 0.9 * 3 ranks: 3 + 0.7
    assert bpc.percentile(list(range(11)), 90) == pytest.approx(9.0)


def test_rows_and_summary_of_a_hand_made_run():
    def req(n, out, cached, ttft):
        return {"prompt": [0] * n, "output_ids": [1] * out, "cached_tokens": cached, "ttft_s": ttft, "latency_s": 2.0}

    waves = [[req(10, 2, 0, 1.0), req(10, 2, 0, 3.0)], [req(16, 2, 8, 0.2), req(16, 2, 11, 0.4)]]
    bounds = [[0, 0], [11, 11]]
    rows = bpc.request_rows("multi-turn", waves, bounds)
    assert [(r["wave"], r["index"], r["first"], r["prompt_tokens"], r["bound_tokens"]) for r in rows] == [
        (0, 0, True, 10, 0), (0, 1, True, 10, 0), (1, 0, False, 16, 11), (1, 1, False, 16, 11)]
    assert "prompt" not in rows[0] and "output_ids" not in rows[0] and rows[2]["output_tokens"] == 2
    s = bpc.summarize(rows, wall_s=7.5)
    assert (s["requests"], s["prompt_tokens"], s["cached_tokens"], s["bound_tokens"]) == (4, 52, 19, 22)
    assert s["hit_rate"] == pytest.approx(19 / 52) and s["bound_rate"] == pytest.approx(22 / 52)
    assert s["hit_vs_bound"] == pytest.approx(19 / 22) and s["wall_s"] == 7.5
    assert s["ttft"]["first"] == {"n": 2, "p50_s": pytest.approx(2.0), "p90_s": pytest.approx(2.8)}
    assert s["ttft"]["rest"] == {"n": 2, "p50_s": pytest.approx(0.3), "p90_s": pytest.approx(0.38)}
    assert [(w["wave"], w["prompt_tokens"], w["cached_tokens"], w["bound_tokens"]) for w in s["per_wave"]] == [
        (0, 20, 0, 0), (1, 32, 19, 22)]
    # the shared prompt's first group is its very first request only
    shared = bpc.request_rows("shared-prompt", waves, bounds)
    assert [r["first"] for r in shared] == [True, False, False, False]
    # nothing reusable (one turn): no ratio to the bound and no later group, rather than a division by zero
    lone = bpc.summarize(bpc.request_rows("multi-turn", waves[:1], bounds[:1]), 1.0)
    assert lone["hit_vs_bound"] is None and lone["hit_rate"] == 0 and lone["ttft"]["rest"]["n"] == 0


def test_markdown_table_renders_each_setting_and_workload():
    rows = bpc.request_rows("multi-turn", [[{"prompt": [0] * 10, "output_ids": [1], "cached_tokens": 0, "ttft_s": 0.5,
                                             "latency_s": 1.0}],
                                           [{"prompt": [0] * 20, "output_ids": [1], "cached_tokens": 9, "ttft_s": 0.1,
                                             "latency_s": 1.0}]], [[0], [12]])
    table = bpc.markdown_table([{"setting": "sink100-2k", "workload": "multi-turn", "summary": bpc.summarize(rows, 3.27)},
                                {"setting": "vanilla", "workload": "shared-prompt",
                                 "summary": bpc.summarize(rows[:1], 1.0)}])
    assert table[0].startswith("| setting | workload | prompt tokens | cached | hit rate | bound |")
    assert table[2] == "| sink100-2k | multi-turn | 30 | 9 | 30.0% | 12 | 40.0% | 75.0% | 0.500 / 0.500 | 0.100 / 0.100 | 3.3 |"
    assert table[3] == "| vanilla | shared-prompt | 10 | 0 | 0.0% | 0 | 0.0% | - | 0.500 / 0.500 | - | 1.0 |"


# -- streaming and the command line, on a fake engine ----------------------------------------------
class FakeEngine:
    """sglang.Engine stand-in with an ideal prefix cache of its own (a prompt's KV held from the moment
    it is sent, its output's once it finished, but the last id), whole pages, never the last prompt
    token. ``evicting`` reports no hits. Streams the output ids whole, as SGLang does by default
    (intermediate chunks share one growing list), or as deltas (``incremental``)."""

    def __init__(self, page_size: int, evicting: bool = False, incremental: bool = False):
        self.loop = asyncio.new_event_loop()
        self.page_size, self.evicting, self.incremental = page_size, evicting, incremental
        self.held: list[list[int]] = []
        self.log: list[str] = []
        self.count = 0
        outer = self

        class Manager:
            async def flush_cache(self, timeout_s):
                assert timeout_s > 0
                outer.held.clear()
                outer.log.append("flush")
                return type("Out", (), {"success": True})()

        self.tokenizer_manager = Manager()

    def get_server_info(self):
        return {"page_size": self.page_size, "max_total_num_tokens": 5000, "version": "x"}

    def generate(self, input_ids, sampling_params):  # the warm-up
        self.log.append(f"warm {len(input_ids)}")
        self.held.append(list(input_ids))

    def _cached(self, ids):
        best = 0
        for seq in self.held:
            n = 0
            while n < min(len(ids), len(seq)) and ids[n] == seq[n]:
                n += 1
            best = max(best, n)
        return 0 if self.evicting else min(best, len(ids) - 1) // self.page_size * self.page_size

    async def async_generate(self, input_ids, sampling_params, stream):
        assert stream and sampling_params["ignore_eos"] and sampling_params["temperature"] == 0
        self.log.append("gen")
        cached = self._cached(input_ids)
        self.held.append(list(input_ids))
        self.count += 1
        out = [700_000 + 1000 * self.count + k for k in range(sampling_params["max_new_tokens"])]

        async def gen():
            streamed: list[int] = []
            for k, tok in enumerate(out):
                await asyncio.sleep(0.002)
                streamed.append(tok)
                meta = {"completion_tokens": k + 1, "cached_tokens": cached}
                if self.incremental:
                    yield {"output_ids": [tok], "meta_info": meta}
                else:
                    yield {"output_ids": streamed if k + 1 < len(out) else list(streamed), "meta_info": meta}
            self.held.append(list(input_ids) + out[:-1])
        return gen()

    def shutdown(self):
        self.log.append("shutdown")
        self.loop.close()


@pytest.mark.parametrize("incremental", [False, True])
def test_stream_request_reads_ids_cached_tokens_and_first_chunk_time(incremental):
    engine = FakeEngine(page_size=1, incremental=incremental)
    engine.held.append([1, 2, 3, 4, 5])
    result = asyncio.run(bpc.stream_request(engine, [1, 2, 3, 9], 5))
    assert result["output_ids"] == [700_000 + 1000 + k for k in range(5)]
    assert result["cached_tokens"] == 3
    assert 0 < result["ttft_s"] < result["latency_s"]
    assert result["latency_s"] >= 5 * 0.002
    engine.loop.close()


def test_cli_runs_every_setting_and_workload_on_one_engine_each(monkeypatch, tmp_path, capsys):
    """Tiny workloads on the fake engine (page size 4): the bound is hand-computed; the ideal cache
    reaches it, the 'evicting' one gets nothing; each workload starts from a flushed cache, after
    the warm-up; JSON and the table carry the numbers."""
    started = []

    def start_engine(setting, model, context_len, mem, **extra):
        started.append((setting, context_len, mem, extra))
        return FakeEngine(extra["page_size"], evicting=setting == "sink100-2k")

    monkeypatch.setattr(bpc, "start_engine", start_engine)
    out = tmp_path / "pc.json"
    bpc.main(["--settings", "vanilla,sink100-2k", "--conversations", "2", "--turns", "3", "--first-len", "10",
              "--user-len", "3", "--output-len", "4", "--system-len", "12", "--suffix-len", "2", "--requests", "5",
              "--concurrency", "2", "--page-size", "4", "--mem", "0.5", "--out", str(out)])
    # context: the longer workload's longest prompt (shared: 12 + 2 = 14; chat: 10 + 2 * (4 + 3) = 24) + 4 out + 64
    assert [(s, c, m, e) for s, c, m, e in started] == [("vanilla", 92, 0.5, {"page_size": 4}),
                                                        ("sink100-2k", 92, 0.5, {"page_size": 4})]
    result = json.loads(out.read_text())
    rows = {(r["setting"], r["workload"]): r for r in result["rows"]}
    assert list(rows) == [("vanilla", "multi-turn"), ("vanilla", "shared-prompt"), ("sink100-2k", "multi-turn"),
                          ("sink100-2k", "shared-prompt")]
    # chat, per conversation: turn 2 (17 ids) reuses 10 + 3 = 13 -> 12; turn 3 (24 ids) 17 + 3 = 20 -> 20
    chat = rows[("vanilla", "multi-turn")]["summary"]
    assert (chat["prompt_tokens"], chat["bound_tokens"], chat["cached_tokens"]) == (2 * (10 + 17 + 24), 64, 64)
    assert chat["hit_vs_bound"] == 1.0 and chat["ttft"]["first"]["n"] == 2 and chat["ttft"]["rest"]["n"] == 4
    assert [w["bound_tokens"] for w in chat["per_wave"]] == [0, 24, 40]
    # shared prompt: 5 x 14 ids; all but the first reuse the 12-id system prompt (whole pages of 4)
    shared = rows[("vanilla", "shared-prompt")]["summary"]
    assert (shared["prompt_tokens"], shared["bound_tokens"], shared["cached_tokens"]) == (70, 48, 48)
    assert [w["requests"] for w in shared["per_wave"]] == [2, 2, 1]
    assert shared["ttft"]["first"]["n"] == 1 and shared["ttft"]["rest"]["n"] == 4
    evicting = rows[("sink100-2k", "shared-prompt")]["summary"]
    assert evicting["bound_tokens"] == 48 and evicting["cached_tokens"] == 0 and evicting["hit_vs_bound"] == 0.0
    assert all(r["page_size"] == 4 and r["pool_info"] == {"max_total_num_tokens": 5000} for r in result["rows"])
    assert len(rows[("sink100-2k", "multi-turn")]["requests"]) == 6
    assert result["meta"]["settings"] == ["vanilla", "sink100-2k"] and result["meta"]["context_len"] == 92
    assert result["meta"]["workloads"] == ["multi-turn", "shared-prompt"] and result["meta"]["seed"] == 0
    captured = capsys.readouterr()
    table = captured.out.strip().splitlines()
    assert table[-1].startswith("| sink100-2k | shared-prompt | 70 | 0 | 0.0% | 48 | 68.6% | 0.0% |")
    assert any(line.startswith("| vanilla | multi-turn | 102 | 64 | 62.7% | 64 | 62.7% | 100.0% |") for line in table)
    assert "vanilla multi-turn turn 2/3: 2 requests, 24 of 34 prompt tokens cached (bound 24)" in captured.err
    assert "sink100-2k shared-prompt wave 3/3: 1 requests, 0 of 14 prompt tokens cached (bound 12)" in captured.err


def test_each_workload_starts_cold_after_the_warm_up_and_the_engine_is_shut_down(monkeypatch):
    engines = []

    def start_engine(setting, model, context_len, mem, **extra):
        engines.append(FakeEngine(1))
        return engines[-1]

    monkeypatch.setattr(bpc, "start_engine", start_engine)
    bpc.main(["--settings", "vanilla", "--conversations", "1", "--turns", "2", "--first-len", "40", "--user-len", "2",
              "--output-len", "2", "--workloads", "shared-prompt,multi-turn", "--requests", "2", "--system-len", "8",
              "--suffix-len", "1"])
    log = engines[0].log
    # warm-up: half the longest prompt (40 + 4 = 44 -> 22) then a quarter more (11), before the first flush
    assert log[:3] == ["warm 22", "warm 33", "flush"]
    assert log[3:] == ["gen"] * 2 + ["flush"] + ["gen"] * 2 + ["shutdown"]

    class Boom(FakeEngine):
        async def async_generate(self, input_ids, sampling_params, stream):
            raise RuntimeError("engine died")

    monkeypatch.setattr(bpc, "start_engine", lambda *args, **kwargs: engines.append(Boom(1)) or engines[-1])
    with pytest.raises(RuntimeError, match="engine died"):
        bpc.main(["--settings", "vanilla", "--conversations", "1", "--turns", "1", "--first-len", "4",
                  "--workloads", "multi-turn"])
    assert engines[-1].log[-1] == "shutdown"


@pytest.mark.parametrize("args, message", [
    (["--turns", "0"], "--turns: must be at least 1; got 0"),
    (["--conversations", "-2"], "--conversations: must be at least 1; got -2"),
    (["--user-len", "0"], "--user-len: must be at least 1; got 0"),
    (["--output-len", "0"], "--output-len: must be at least 1; got 0"),
    (["--suffix-len", "0"], "--suffix-len: must be at least 1; got 0"),
    (["--concurrency", "-1"], "--concurrency: must be at least 0 (0: all at once); got -1"),
    (["--page-size", "0"], "--page-size: must be at least 1; got 0"),
    (["--mem", "1.5"], "--mem: a fraction of GPU memory between 0 and 1; got 1.5"),
    (["--workloads", "multi-turn,chat"], "--workloads: unknown workload 'chat'; allowed: multi-turn, shared-prompt"),
    (["--workloads", "shared-prompt,shared-prompt"], "--workloads: shared-prompt given more than once"),
    (["--workloads", ","], "--workloads: empty"),
    (["--settings", "vanilla,sink100-2k+fast"], "--settings: unknown, repeated or misplaced suffix '+fast'"),
    (["--settings", "vanilla,vanilla"], "--settings: vanilla given more than once"),
    (["--turns", "two"], "argument --turns: invalid int value: 'two'"),
])
def test_bad_input_is_refused_naming_the_flag_before_any_engine_starts(monkeypatch, capsys, args, message):
    def start_engine(*args, **kwargs):
        raise AssertionError("an engine was started")

    monkeypatch.setattr(bpc, "start_engine", start_engine)
    with pytest.raises(SystemExit) as e:
        bpc.main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_help_states_the_defaults_and_explains_the_bound():
    r = subprocess.run([sys.executable, str(BENCH / "bench_prefix_cache.py"), "--help"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for flag, default in [("--settings", "vanilla,sink100-2k,sink100-2k+noevict"), ("--conversations", "8"),
                          ("--turns", "6"), ("--first-len", "8192"), ("--user-len", "512"), ("--output-len", "256"),
                          ("--system-len", "16384"), ("--suffix-len", "256"), ("--requests", "32"),
                          ("--concurrency", "8"), ("--page-size", "1"), ("--seed", "0"), ("--mem", "0.85")]:
        assert flag in r.stdout
        assert f"(default: {default})" in " ".join(r.stdout.split()), flag
    assert "but the last" in r.stdout and "page-aligned down" in r.stdout  # the bound's definition, from the docstring


# -- GPU --------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_smoke_small_run_reports_hits_within_the_bound(tmp_path):
    """Three engines on the Qwen3-0.6B shape, small workloads past the 2K window: every setting runs
    both workloads; no total exceeds the ideal bound; stock SGLang and SWAA without eviction reuse
    (nearly) all of the chat's reusable prefix."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: the smoke test starts sglang Engines")
    out = tmp_path / "pc.json"
    r = subprocess.run([sys.executable, str(BENCH / "bench_prefix_cache.py"), "--model",
                        str(BENCH / "models" / "qwen3-0.6b"), "--conversations", "2", "--turns", "3",
                        "--first-len", "3000", "--user-len", "64", "--output-len", "32", "--system-len", "3000",
                        "--suffix-len", "32", "--requests", "4", "--concurrency", "2", "--mem", "0.5",
                        "--out", str(out)], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = {(x["setting"], x["workload"]): x["summary"] for x in json.loads(out.read_text())["rows"]}
    assert len(rows) == 6
    for (setting, workload), s in rows.items():
        assert s["requests"] == (6 if workload == "multi-turn" else 4)
        assert s["cached_tokens"] <= s["bound_tokens"], (setting, workload, s)
    for setting in ("vanilla", "sink100-2k+noevict"):
        assert rows[(setting, "multi-turn")]["hit_vs_bound"] >= 0.95, rows[(setting, "multi-turn")]
    assert "| vanilla | multi-turn |" in r.stdout
