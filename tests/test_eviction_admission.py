"""Admission with window eviction under load.

tests/scheduler_replay.py replays SGLang's scheduler loop around its real admission, allocator,
pool and tree classes, our SWAASinkRadixCache and the plugin's admission hooks
(attention_backends/admission.py), at the H200 run's sizes divided by 32 (pools as the launcher
sizes them for a 128K context). Three failure modes, each with its control:

* more 128K-token requests than the SWA pool holds as whole-chunk locks (the H200 run where 104
  of them made no request finish in 11 minutes): the leaf split on insert;
* shorter prompts with long generations: running requests outgrow the SWA pool and decode
  retracts them, redoing their prefill: the SWA reservation for decode growth;
* two requests cut to SWA-sized chunks in one pass: the first is dropped as chunked and decodes
  from part of its prompt: one cut request per pass.

After every run the tree is flushed and both pools must be whole (no leak, no double free).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPLAY = Path(__file__).resolve().parent / "scheduler_replay.py"


HEADROOM_AT_SCALE_32 = 63 + 2 * 4 + 1  # decode_swa_headroom(W - 1 = 2047 / 32, interval 128 / 32, page 1)


def _replays(*variants: list[str], requests: int = 104) -> list[dict]:
    """Run the replay once per argument list, in parallel subprocesses (it patches SGLang globals)."""
    procs = [subprocess.Popen([sys.executable, str(REPLAY), "--scale", "32", "--requests", str(requests), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in variants]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
    return results


@pytest.mark.slow
def test_long_requests_beyond_the_swa_lock_budget_are_admitted_by_the_full_pool_without_retraction():
    # the control is SGLang's own admission (no split, none of the plugin's admission hooks): the H200 stall
    fixed, control, reserve_only = _replays([], ["--control-no-split", "--leave-out", "reserve,one-chunk"],
                                            ["--control-no-split"])
    for r in (fixed, control, reserve_only):
        assert r["drained"] and r["finished"] == r["requests"] == 104 and r["aborted"] == 0
        assert r["pools_whole"] and r["short_prefills"] == 0
    # full pool (13.1M / 32) over 4,096 + 16 tokens per request: 99 at once
    assert fixed["peak_running"] == fixed["config"]["full"] // (fixed["config"]["L"] + fixed["config"]["max_new"]) == 99
    assert fixed["retracted"] == 0 and fixed["prefill_tokens"] == fixed["prompt_tokens"]
    # the control: whole-chunk SWA locks cap the running set near 54, and decode retracts parked
    # requests whose prefill is then done again (at full scale: about one retraction per decode step)
    assert control["peak_running"] < 60
    assert control["retracted"] > 0 and control["prefill_tokens"] > control["prompt_tokens"]
    # the SWA reservation alone stops the retractions, but whole-chunk locks still halve the running set
    assert reserve_only["retracted"] == 0 and reserve_only["peak_running"] < 60


def test_the_cache_switches_the_leaf_split_on_and_refuses_an_explicit_off(monkeypatch):
    from attention_backends.radix_cache import SPLIT_LEAF_ENV, require_split_leaf_on_insert

    monkeypatch.setenv(SPLIT_LEAF_ENV, "1")  # recorded first, so teardown restores what was there before
    monkeypatch.delenv(SPLIT_LEAF_ENV)
    require_split_leaf_on_insert()
    from sglang.srt.environ import envs

    assert envs.SGLANG_OPT_SWA_SPLIT_LEAF_ON_INSERT.get() is True
    monkeypatch.setenv(SPLIT_LEAF_ENV, "1")
    require_split_leaf_on_insert()
    monkeypatch.setenv(SPLIT_LEAF_ENV, "0")
    with pytest.raises(ValueError, match=r"SGLANG_OPT_SWA_SPLIT_LEAF_ON_INSERT='0': window eviction needs"):
        require_split_leaf_on_insert()


def _clean(r: dict) -> None:
    """Every request done, each prompt token prefilled once, none retracted or cut short, pools whole."""
    assert r["drained"] and r["finished"] == r["requests"] and r["aborted"] == 0
    assert r["retracted"] == 0 and r["short_prefills"] == 0
    assert r["prefill_tokens"] == r["prompt_tokens"]
    assert r["crashed"] is None and r["pools_whole"], (r["full_free_after_flush"], r["swa_free_after_flush"])


@pytest.mark.slow
def test_running_requests_decode_growth_is_reserved_so_decode_never_retracts():
    """300 requests of 16K in and 8K out (scaled): the full pool admits about 210 at once, the SWA pool
    carries about 106 to the end of their generations. Without the reservation decode retracts
    hundreds of times and most prefill is done again (a retracted request's window is evicted)."""
    shape = ["--prompt-real", "16384", "--new-real", "8192"]
    fixed, control = _replays(shape, [*shape, "--leave-out", "reserve"], requests=300)
    _clean(fixed)
    assert fixed["peak_running"] >= 100  # the SWA pool is used, not starved
    assert fixed["max_owned_swa"] <= HEADROOM_AT_SCALE_32  # the bound the reservation assumes held
    assert control["finished"] == 300 and control["pools_whole"]
    assert control["retracted"] > 100 and control["prefill_tokens"] > 2 * control["prompt_tokens"]
    assert control["max_owned_swa"] > HEADROOM_AT_SCALE_32  # prefill passes kept deferring SGLang's freeing
    assert fixed["est_time"] < control["est_time"] / 2  # modelled H200 time


@pytest.mark.slow
def test_one_request_is_cut_to_a_chunk_per_pass():
    """600 requests of 2K in and 1K out, reservation left out so the SWA pool runs tight: SGLang's
    SWA chunk cap cuts a request, the pass goes on and cuts a second one, which replaces the first
    as the chunked request; the first then decodes from part of its prompt. With the guard none does."""
    shape = ["--prompt-real", "2048", "--new-real", "1024"]
    guarded, control = _replays([*shape, "--leave-out", "reserve"], [*shape, "--leave-out", "reserve,one-chunk"],
                                requests=600)
    for r in (guarded, control):
        assert r["drained"] and r["finished"] == 600 and r["retracted"] > 0  # the tight pool of this scenario
    assert guarded["short_prefills"] == 0 and guarded["pools_whole"]
    assert control["short_prefills"] > 0


@pytest.mark.slow
def test_the_invariant_check_sees_the_dropped_chunk_and_the_hooks_prevent_it():
    """400 requests of 32K in and 4K out with SGLang's own admission: after cut requests were dropped,
    a live sink node of the tree lost its SWA slots, and the run ends in the allocator's "Out of
    memory". With the hooks the same load keeps every invariant (checked every 5 passes)."""
    shape = ["--prompt-real", "32768", "--new-real", "4096", "--check-every", "5"]
    hooked, control = _replays(shape, [*shape, "--leave-out", "reserve,one-chunk"], requests=400)
    _clean(hooked)
    assert hooked["invariant_violations"] == 0 and hooked["crashed"] is None
    assert control["short_prefills"] > 0 and control["invariant_violations"] > 0
    assert "has freed SWA slots" in control["first_violation"]
    assert control["crashed"].startswith("Out of memory")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_load_with_aborts_retractions_and_cache_hits_keeps_every_invariant(seed):
    """400 requests arriving over time, prompts log-uniform up to 32K (30% sharing a prefix), 1 to 16K
    new tokens, a client abort every 50 passes on average, and a full pool small enough that
    SGLang's optimistic full-pool admission retracts: after every 5th pass the tree's live nodes and
    each running request's sinks and window have their SWA slots, and nothing was freed twice."""
    (r,) = _replays(["--mixed", "--prompt-real", "32768", "--new-real", "16384", "--arrive-prob", "1",
                     "--abort-prob", "0.02", "--full-real", "300000", "--conservativeness", "0.3",
                     "--check-every", "5", "--seed", str(seed)], requests=400)
    assert r["drained"] and r["crashed"] is None and r["pools_whole"]
    assert r["invariant_violations"] == 0 and r["short_prefills"] == 0
    # the paths were exercised: retraction and readmission, aborts, prefix-cache hits
    assert r["retracted"] > 0 and r["readmit"] > 0 and r["aborted_by_client"] > 0
    assert r["prefill_tokens"] < r["prompt_tokens"]
    assert r["finished"] + r["aborted_by_client"] >= r["requests"]


@pytest.mark.slow
def test_mixed_load_at_page_16_keeps_every_invariant():
    """The mixed load above with KV pages of 16 tokens (SGLang's paged allocator, page-aligned tree and
    matches, window eviction and the sink floor in whole pages), 150 requests: every invariant holds after
    every 5th pass, running requests stay within the (page-ceiled) headroom, and the pools are whole at the
    end; retraction, readmission, aborts and prefix hits happen."""
    from attention_backends.admission import decode_swa_headroom

    (r,) = _replays(["--page", "16", "--mixed", "--prompt-real", "32768", "--new-real", "16384", "--arrive-prob", "1",
                     "--abort-prob", "0.02", "--full-real", "300000", "--conservativeness", "0.3",
                     "--check-every", "5"], requests=150)
    assert r["config"]["full"] % 16 == 0 and r["config"]["swa"] % 16 == 0
    assert r["drained"] and r["crashed"] is None and r["pools_whole"]
    assert r["invariant_violations"] == 0 and r["short_prefills"] == 0
    assert r["retracted"] > 0 and r["readmit"] > 0 and r["aborted_by_client"] > 0
    assert r["prefill_tokens"] < r["prompt_tokens"]
    assert r["finished"] + r["aborted_by_client"] >= r["requests"]
    assert r["max_owned_swa"] <= decode_swa_headroom(2048 // 32 - 1, 128 // 32, 16)


@pytest.mark.slow
def test_all_hooks_leave_short_request_loads_clean():
    """The same 600 requests with every hook: no retraction, no cut-short request."""
    (r,) = _replays(["--prompt-real", "2048", "--new-real", "1024"], requests=600)
    _clean(r)


@pytest.mark.slow
def test_the_hooks_do_nothing_without_the_swaa_cache():
    """The plugin registers its hooks in every SGLang process; with SGLang's own SWA cache (a vanilla
    server) the replay must run exactly as without them."""
    shape = ["--cache", "stock", "--prompt-real", "2048", "--new-real", "1024"]
    hooked, bare = _replays(shape, [*shape, "--leave-out", "reserve,one-chunk"], requests=600)
    drop = {"cpu_s", "config"}
    assert {k: v for k, v in hooked.items() if k not in drop} == {k: v for k, v in bare.items() if k not in drop}
    assert hooked["retracted"] > 0  # the scenario does exercise SWA pressure


@pytest.mark.slow
def test_overlap_scheduler_state_is_reserved_in_full():
    """SGLang's overlap scheduler (its default) plans the next pass while the last prefill's result is
    still unprocessed: real Req and tree state then has cache_protected_len at the matched prefix and
    the prompt's slots outside the tree. The reservation must be the same before and after the result
    (a whole headroom for a request with long generations ahead), not zero because the unprocessed
    prompt looks owned. Real classes, in a subprocess (the hooks patch PrefillAdder)."""
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPLAY.parent)!r})\n"
        "import scheduler_replay as R\n"
        "from attention_backends.admission import owned_swa_slots\n"
        "sim = R.setup(R.parse_args(['--scale', '32', '--requests', '1', '--prompt-real', '4096', '--new-real', '8192']))\n"
        "sim.submit(1)\n"
        "batch = sim.get_new_batch_prefill()\n"
        "sim.launch_extend(batch)\n"
        "(r,) = batch\n"
        "state = lambda: dict(protected=r.cache_protected_len, allocated=r.kv.kv_allocated_len, owned=owned_swa_slots(r),\n"
        "                     offset=sim.make_adder([r]).rem_swa_token_offset, headroom=sim.tree.decode_swa_headroom)\n"
        "before = state()\n"
        "sim.process_extend_result(batch)\n"
        "print('STATES', json.dumps([before, state()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    before, after = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("STATES "))[7:])
    assert before["protected"] == 0 and before["allocated"] == 128  # the state the overlap scheduler plans in
    assert after["protected"] == 128  # the prompt went to the tree with the result
    assert before["owned"] == after["owned"] == 0
    assert before["offset"] == after["offset"] == before["headroom"] == HEADROOM_AT_SCALE_32


@pytest.mark.slow
@pytest.mark.parametrize("swa_real", [4800, 6400])
def test_a_chunked_long_generation_in_a_small_swa_pool_is_not_parked_for_ever(swa_real):
    """One request of 20K in and 4K out, alone, in an SWA pool of 150 or 200 slots at this scale: its
    earlier chunks lock more than one window, and reserving its whole decode growth left its next
    chunk no room, with nothing running that could free any (found by review; with the whole growth
    reserved it stops for good at 87 and 187 of 640 prompt tokens). The reservation now leaves the
    chunk a page at least."""
    (r,) = _replays(["--prompt-real", "20480", "--new-real", "4096", "--swa-real", str(swa_real),
                     "--max-steps", "20000"], requests=1)
    assert r["drained"] and r["finished"] == 1 and r["short_prefills"] == 0 and r["crashed"] is None
    assert r["prefill_tokens"] == r["prompt_tokens"] == 640 and r["pools_whole"]


def test_reservation_arithmetic():
    from types import SimpleNamespace as NS

    from attention_backends.admission import (
        decode_swa_headroom,
        new_request_decode_growth,
        owned_swa_slots,
        running_decode_growth,
    )

    assert decode_swa_headroom(2047, 128, 1) == 2047 + 256 + 1
    assert decode_swa_headroom(2047, 0, 16) == 2047 + 2 + 16  # SGLang treats interval 0 as 1

    def req(allocated, evicted, protected, prefill_end, max_new, outputs, done=False):
        return NS(kv=NS(kv_allocated_len=allocated, swa_evicted_seqlen=evicted), cache_protected_len=protected,
                  extend_range=NS(end=prefill_end), sampling_params=NS(max_new_tokens=max_new),
                  output_ids=[0] * outputs, finished=lambda: done, decode_batch_idx=max(0, outputs - 1))

    assert owned_swa_slots(NS(kv=None)) == 0
    # just prefilled 10,000 tokens (all in the tree): may take the whole headroom, capped by what is left
    assert running_decode_growth(req(10_000, 0, 10_000, 10_000, 512, 1), 2304) == 511
    assert running_decode_growth(req(10_000, 0, 10_000, 10_000, 5000, 1), 2304) == 2304
    # overlap scheduler: the prefill result is not processed yet, so the tree holds only the matched
    # prefix (3,000); the prompt's slots go to the tree next, and nothing is owned past the prompt
    in_flight = req(10_000, 0, 3_000, 10_000, 5000, 1)
    assert owned_swa_slots(in_flight) == 0 and running_decode_growth(in_flight, 2304) == 2304
    # 3,000 decoded, SGLang freed up to 11,000: owns 2,000 slots past the tree, may add 304 more
    assert running_decode_growth(req(13_000, 11_000, 10_000, 10_000, 5000, 3000), 2304) == 304
    # owns more than the headroom (freeing deferred): nothing more is charged
    assert running_decode_growth(req(13_000, 10_000, 10_000, 10_000, 5000, 3000), 2304) == 0
    # --enable-mixed-chunk sets a decoding request's extend_range to its last token: the tree's end is
    # then cache_protected_len (2,000 owned as above), not the last token
    assert owned_swa_slots(req(13_000, 11_000, 10_000, 12_999, 5000, 3000)) == 2000
    # finished (EOS, abort) but not yet filtered out of the running batch: nothing
    assert running_decode_growth(req(10_000, 0, 10_000, 10_000, 5000, 7, done=True), 2304) == 0
    # pages: the prompt's last partial page stays with the request; growth is charged in whole pages
    paged = req(10_010, 0, 10_000, 10_005, 5000, 6)  # 16-token pages: tree to 10,000, 5 decoded
    assert owned_swa_slots(paged, 16) == 10 and running_decode_growth(paged, 2320, 16) == 2320  # 2,310 ceiled
    paged_in_flight = req(10_005, 0, 3_000, 10_005, 5000, 1)
    assert owned_swa_slots(paged_in_flight, 16) == 5
    # new request: SGLang already reserves min(extend + max_new, W) - extend for decode
    assert new_request_decode_growth(extend_len=8192, max_new=512, sglang_window=2047, headroom=2304) == 512
    assert new_request_decode_growth(extend_len=100, max_new=5000, sglang_window=2047, headroom=2304) == 2304 - 1947
    assert new_request_decode_growth(extend_len=0, max_new=10, sglang_window=2047, headroom=2304) == 0
    assert new_request_decode_growth(extend_len=8192, max_new=5, sglang_window=2047, headroom=2304, page_size=16) == 16


def test_headroom_is_capped_by_a_small_swa_pool(caplog):
    """A pool that holds one request's sinks and window but not a full headroom beside them: the
    reservation shrinks to what fits (else long generations would wait for ever), with a warning."""
    import logging

    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    from attention_backends.radix_cache import SWAASinkRadixCache

    def cache(swa):
        pool = SWAKVPool(size=4096, size_swa=swa, page_size=1, dtype=torch.float32, head_num=1, head_dim=1,
                         swa_attention_layer_ids=[0], full_attention_layer_ids=[1], device="cpu")
        alloc = SWATokenToKVPoolAllocator(4096, swa, 1, torch.float32, "cpu", pool, need_sort=False)
        return SWAASinkRadixCache(CacheInitParams(disable=False, req_to_token_pool=ReqToTokenPool(4, 64, "cpu", False),
                                                  token_to_kv_pool_allocator=alloc, page_size=1,
                                                  sliding_window_size=63), keep_first=4)

    with caplog.at_level(logging.WARNING, logger="attention_backends.radix_cache"):
        assert cache(2000).decode_swa_headroom == 63 + 2 * 128 + 1  # SGLang's default interval, 128
        ours = [r for r in caplog.records if r.name == "attention_backends.radix_cache"]
        assert not ours
        assert cache(200).decode_swa_headroom == 200 - (4 + 63 + 2)
    ours = [r.getMessage() for r in caplog.records if r.name == "attention_backends.radix_cache"]
    assert len(ours) == 1 and "SWA pool of 200 tokens" in ours[0] and "--swa-full-tokens-ratio" in ours[0]
