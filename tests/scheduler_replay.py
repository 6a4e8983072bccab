"""CPU replay of SGLang 0.5.17's scheduler loop around its REAL classes, for the window-eviction
admission test (tests/test_eviction_admission.py runs it in a subprocess: it patches SGLang globals).

Real: PrefillAdder, Req, SWATokenToKVPoolAllocator / SWAKVPool, ReqToTokenPool, our
SWAASinkRadixCache, alloc_token_slots / alloc_req_slots, release_kv_cache, release_req,
free_swa_out_of_window_slots, NewTokenRatioTracker. The loop mirrors (non-overlap)
scheduler.get_next_batch_to_run / _get_new_batch_prefill_raw / update_running_batch /
ScheduleBatch.check_decode_mem / retract_decode / prepare_for_extend / prepare_for_decode /
maybe_evict_swa and the prefill and decode result processing. The plugin's admission hooks
(attention_backends/admission.py) are registered and applied through SGLang's HookRegistry, as in
a server; --leave-out drops some for controls. No model: the next token is a fresh id. Sizes are
those of the H200 run (Qwen3-4B shape, 128K context, W = 2048, k = 100, chunk 8192, pools as
SGLang sized them) divided by --scale; --prompt-real / --new-real set the requests.

Reported (one RESULT line of JSON): retractions, requests that started decoding from part of their
prompt (short_prefills), prompt tokens prefilled against sent, the most requests running at once,
the most SWA slots a request owned past the tree, a modelled H200 time, and whether both pools are
whole after the tree is flushed at the end.

    python tests/scheduler_replay.py --scale 32 --requests 104 [--control-no-split] [--leave-out reserve,one-chunk]
    python tests/scheduler_replay.py --scale 32 --requests 300 --prompt-real 16384 --new-real 8192

--page P (default 1) runs it with KV pages of P tokens: SGLang's paged allocator through the real
alloc_paged_token_slots_extend / alloc_paged_token_slots_decode (its two Triton kernels replaced by the
CPU stand-ins of tests/cpu_paged_kernels.py), the decode memory check in pages, and pools in whole pages.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from array import array
from types import SimpleNamespace

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
import torch

from sglang.srt.managers.schedule_batch import FINISH_ABORT, FINISH_LENGTH, Req, ReqKvInfo, release_req
from sglang.srt.managers.schedule_policy import AddReqResult, PrefillAdder
from sglang.srt.managers.scheduler_components.new_token_ratio_tracker import NewTokenRatioTracker
from sglang.srt.mem_cache.allocation import (
    alloc_paged_token_slots_decode,
    alloc_paged_token_slots_extend,
    alloc_req_slots,
    alloc_token_slots,
)
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.common import (
    evict_from_tree_cache,
    free_swa_out_of_window_slots,
    maybe_cache_unfinished_req,
    release_kv_cache,
)
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
from sglang.srt.mem_cache.swa_radix_cache import SWARadixCache
from sglang.srt.sampling.sampling_params import SamplingParams

from attention_backends.admission import owned_swa_slots
from attention_backends.radix_cache import SWAASinkRadixCache, sink_floor
import sglang.srt.managers.schedule_policy as _sp
_sp.is_dsa_prefill_cp_in_seq_split = lambda: False
_sp.is_prefill_context_parallel_enabled = lambda: False
Req.effective_kv_committed_len = lambda self: self.kv_committed_len
import sglang.srt.mem_cache.common as _C
_C.get_spec = lambda: SimpleNamespace(speculative_algorithm=None)
_C.get_serving = lambda: SimpleNamespace(strip_thinking_cache=False)


class Sim:
    def __init__(self, a):
        self.a = a
        self.pool = SWAKVPool(size=a.full, size_swa=a.swa, page_size=a.page, dtype=torch.float32, head_num=1,
                              head_dim=1, swa_attention_layer_ids=[0], full_attention_layer_ids=[1], device="cpu")
        self.alloc = SWATokenToKVPoolAllocator(a.full, a.swa, a.page, torch.float32, "cpu", self.pool, need_sort=False)
        self.r2t = ReqToTokenPool(a.max_reqs, a.L + a.max_new + 8 + a.page, "cpu", False)
        params = CacheInitParams(disable=False, req_to_token_pool=self.r2t, token_to_kv_pool_allocator=self.alloc,
                                 page_size=a.page, sliding_window_size=a.wm1)
        self.tree = SWAASinkRadixCache(params, a.k) if a.cache == "ours" else SWARadixCache(params)
        self.floor = sink_floor(a.k, a.page) if a.cache == "ours" else 0
        if a.control_no_split:  # the control: SGLang's default, which our cache switches on at construction
            from sglang.srt.environ import envs

            envs.SGLANG_OPT_SWA_SPLIT_LEAF_ON_INSERT.set(False)
        init = min(0.7 * a.conservativeness, 1.0)
        mn = min(init * 0.14, 1.0)
        self.ratio = NewTokenRatioTracker(init=init, min=mn, decay=(init - mn) / 600, current=init)
        self.server_args = SimpleNamespace(disaggregation_mode="null", retraction_policy="default")
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.chunked_req = None
        self.last_extend: list[Req] | None = None
        self.rng = random.Random(a.seed)
        self.tok = 10**6
        self.forward_ct = 0
        self.stats = dict(prefill_passes=0, prefill_tokens=0, decode_steps=0, retracted=0, finished=0,
                          aborted=0, first_tokens=0, readmit=0, readmit_hit_tokens=0, victim_outputs=0,
                          est_time=0.0, peak_running=0, max_owned_swa=0, short_prefills=0,
                          prompt_tokens=0, aborted_by_client=0, invariant_violations=0)
        self.prompts: list[array] = []
        self.nid = 0

    # --- requests ---------------------------------------------------------------------
    def submit(self, n):
        for _ in range(n):
            if self.a.mixed:
                ids, max_new = self.mixed_prompt(), self.rng.randint(1, self.a.max_new)
            else:
                ids, max_new = array("q", [self.rng.randrange(1, 150000) for _ in range(self.a.L)]), self.a.max_new
            self.prompts.append(ids)
            self.stats["prompt_tokens"] += len(ids)
            r = Req(f"r{self.nid}", "", ids, SamplingParams(max_new_tokens=max_new, ignore_eos=True, temperature=0),
                    vocab_size=10**9)
            r.swa_evict_floor = self.floor  # our Req.__init__ AFTER hook
            self.nid += 1
            self.waiting.append(r)

    def mixed_prompt(self) -> array:
        """Log-uniform length in [1, L]; 30% start with part of an earlier prompt (radix cache hits)."""
        n = max(1, int(round(self.a.L ** self.rng.random())))
        head = array("q")
        if self.prompts and self.rng.random() < 0.3:
            earlier = self.rng.choice(self.prompts)
            head = earlier[: self.rng.randint(1, min(n, len(earlier)))]
        return head + array("q", [self.rng.randrange(1, 150000) for _ in range(n - len(head))])

    def abort_one(self) -> None:
        """Abort a random waiting or running request as SGLang does: a waiting one leaves the queue, a
        running one finishes with FINISH_ABORT after its next forward (the chunked request is left alone)."""
        pool = self.waiting + [r for r in self.running if not r.finished()]
        if not pool:
            return
        r = self.rng.choice(pool)
        if r in self.waiting:
            self.waiting.remove(r)
            assert r.req_pool_idx is None  # never admitted, or retracted (its KV was released then)
        else:
            r.to_finish = FINISH_ABORT()
        self.stats["aborted_by_client"] += 1

    def finish_check(self, r):
        if getattr(r, "to_finish", None) is not None:
            r.finished_reason, r.to_finish = r.to_finish, None
        elif len(r.output_ids) >= r.sampling_params.max_new_tokens:
            r.finished_reason = FINISH_LENGTH(length=r.sampling_params.max_new_tokens)

    # --- invariants (--check-every) -------------------------------------------------------
    def check_invariants(self) -> None:
        """The tree's live SWA nodes and every running request's sinks and window have SWA slots, and no
        pool has more free slots than its size (a double free)."""
        mapping = self.alloc.full_to_swa_index_mapping
        bad = []
        stack = [self.tree.root_node]
        while stack:
            n = stack.pop()
            stack.extend(n.children.values())
            if n is not self.tree.root_node and not n.swa_tombstone and bool((mapping[n.value] == 0).any()):
                bad.append(f"live tree node {n.id} ({len(n.value)} tokens) has freed SWA slots")
        for r in self.running:
            if r.finished() or r.kv is None:
                continue
            end = r.kv_committed_len
            needed = list(range(min(self.floor, end))) + list(range(max(self.floor, end - self.a.wm1), end))
            slots = self.r2t.req_to_token[r.req_pool_idx, needed].to(torch.int64)
            if bool((mapping[slots] == 0).any()):
                bad.append(f"running request {r.rid} lost a sink or window slot")
        if self.alloc.swa_available_size() > self.a.swa or self.alloc.full_available_size() > self.a.full:
            bad.append("a pool has more free slots than its size")
        self.stats["invariant_violations"] += len(bad)
        if bad and not self.stats.get("first_violation"):
            self.stats["first_violation"] = f"step {self.forward_ct}: {bad[0]}"

    def next_token(self):
        self.tok += 1
        return self.tok

    # --- scheduler.get_next_batch_to_run ------------------------------------------------
    def step(self):
        self.forward_ct += 1
        if self.chunked_req is not None and self.chunked_req.extend_range.end > len(self.chunked_req.prefix_indices):
            maybe_cache_unfinished_req(self.chunked_req, self.tree, chunked=True)  # stash_chunked_request
        if self.last_extend is not None:
            for r in self.last_extend:
                if r is not self.chunked_req and not r.finished() and r not in self.running:
                    self.running.append(r)
            self.last_extend = None
        batch = self.get_new_batch_prefill()
        if batch is not None:
            self.run_extend(batch)
            self.last_extend = batch
            return "prefill"
        self.running = [r for r in self.running if not r.finished()]
        self.stats["peak_running"] = max(self.stats["peak_running"], len(self.running))
        if self.running:
            self.update_running_batch_and_decode()
            return "decode"
        return "idle"

    def make_adder(self, running):
        """SGLang's PrefillAdder for one pass over ``running`` (the plugin's hooks run inside it)."""
        rb = SimpleNamespace(reqs=running, batch_size=lambda: len(running))
        return PrefillAdder(self.a.page, self.tree, self.alloc, rb, self.ratio.current, self.a.max_prefill, self.a.chunk, 0, 0,
                            max_prefill_bs=0, max_running_requests=self.a.max_running, prefill_max_requests=None,
                            prefill_delayer_single_pass=None, dllm_config=None, waiting_queue_len=len(self.waiting))

    def get_new_batch_prefill(self):
        if not self.waiting and self.chunked_req is None:
            return None
        running_bs = len(self.running)
        if self.a.max_running - running_bs <= 0 and self.chunked_req is None:
            return None
        adder = self.make_adder(self.running)
        if self.chunked_req is not None:
            self.chunked_req.init_next_round_input()
            self.chunked_req = adder.add_chunked_req(self.chunked_req)
        for req in self.waiting:
            if len(adder.can_run_list) >= self.a.max_running - len(self.running):
                break
            req.init_next_round_input(self.tree)
            res = adder.add_one_req(req, has_chunked_req=(self.chunked_req is not None), truncation_align_size=None)
            if res != AddReqResult.CONTINUE:
                break
        can_run = adder.can_run_list
        if not can_run:
            return None
        s = set(map(id, can_run))
        self.waiting = [x for x in self.waiting if id(x) not in s]
        if adder.new_chunked_req is not None:
            assert self.chunked_req is None
            self.chunked_req = adder.new_chunked_req
        if self.chunked_req is not None:
            self.chunked_req.inflight_middle_chunks += 1
        return can_run

    # --- ScheduleBatch.prepare_for_extend + alloc_for_extend + forward + process result ----
    def run_extend(self, reqs):
        """ScheduleBatch.prepare_for_extend (request and KV slots), the forward, and its result."""
        self.launch_extend(reqs)
        self.process_extend_result(reqs)

    def launch_extend(self, reqs):
        new = [r for r in reqs if r.req_pool_idx is None]
        for r in new:
            if r.retracted_stain:
                self.stats["readmit"] += 1
                self.stats["readmit_hit_tokens"] += len(r.prefix_indices)
        if new:
            idxs = alloc_req_slots(self.r2t, new, self.tree)
            for r, i in zip(new, idxs):
                r.req_pool_idx = i
        n = sum(r.extend_range.length for r in reqs)
        if self.a.page == 1:
            out = alloc_token_slots(self.tree, n)  # evicts from the tree, raises on OOM
        else:  # alloc_for_extend's paged branch: last_loc is the slot of each request's last prefix position
            pre = torch.tensor([len(r.prefix_indices) for r in reqs], dtype=torch.int64)
            seq = torch.tensor([r.extend_range.end for r in reqs], dtype=torch.int64)
            last = torch.cat([r.prefix_indices[-1:].to(torch.int64) if len(r.prefix_indices) else torch.tensor([-1])
                              for r in reqs])
            out = alloc_paged_token_slots_extend(self.tree, pre, pre, seq, seq, last, n)
        off = 0
        for r in reqs:
            p, e = len(r.prefix_indices), r.extend_range.end
            assert r.extend_range.start == p
            self.r2t.req_to_token[r.req_pool_idx, :p] = r.prefix_indices.to(torch.int32)
            self.r2t.req_to_token[r.req_pool_idx, p:e] = out[off:off + e - p].to(torch.int32)
            off += e - p
            if r.kv is None:
                r.kv = ReqKvInfo(kv_allocated_len=e, swa_evicted_seqlen=0)
            else:
                r.kv.kv_allocated_len = e
            r.extend_batch_idx += 1
            r.kv_committed_len = e
        self.stats["prefill_passes"] += 1
        self.stats["prefill_tokens"] += n
        # time model (H200, scaled back by self.a.scale): 12 ms fixed + 132 ms per 8192 real tokens
        self.stats["est_time"] += 0.012 + 0.132 * n * self.a.scale / 8192

    def process_extend_result(self, reqs):
        """The prefill's result: first tokens, finished requests released, the rest cached in the tree.
        (The overlap scheduler plans its next pass before this runs; see make_adder.)"""
        for r in reqs:
            if r.inflight_middle_chunks <= 0:
                if r.kv_committed_len < len(r.origin_input_ids) + len(r.output_ids):
                    self.stats["short_prefills"] += 1  # decodes from part of its prompt (it was cut, then dropped)
                r.output_ids.append(self.next_token())
                self.stats["first_tokens"] += 1
                self.finish_check(r)
                if r.finished():
                    release_kv_cache(r, self.tree)
                    self.stats["finished"] += 1
                else:
                    maybe_cache_unfinished_req(r, self.tree)
            else:
                r.inflight_middle_chunks -= 1

    # --- scheduler.update_running_batch + prepare_for_decode + forward + result ------------
    def check_decode_mem(self, reqs):
        """ScheduleBatch.check_decode_mem: a page for each request whose KV ends on a page boundary."""
        num = sum(1 for r in reqs if r.kv_committed_len % self.a.page == 0) * self.a.page
        evict_from_tree_cache(self.tree, num)
        return self.alloc.available_size() >= num

    def update_running_batch_and_decode(self):
        reqs = self.running
        if not self.check_decode_mem(reqs):
            order = sorted(range(len(reqs)), key=lambda i: (len(reqs[i].output_ids), -len(reqs[i].origin_input_ids)),
                           reverse=True)
            retracted, first = [], True
            while first or not self.check_decode_mem([reqs[i] for i in order]):
                if len(order) == 1:
                    break
                first = False
                i = order.pop()
                retracted.append(reqs[i])
                self.stats["victim_outputs"] += len(reqs[i].output_ids)
                release_req(req=reqs[i], remaing_req_count=len(order), server_args=self.server_args,
                            req_to_token_pool=self.r2t, token_to_kv_pool_allocator=self.alloc, tree_cache=self.tree,
                            hisparse_coordinator=None)
            if len(order) <= 1 and not self.check_decode_mem([reqs[i] for i in order]):
                i = order.pop()
                reqs[i].finished_reason = "abort"
                release_kv_cache(reqs[i], self.tree, is_insert=False)
                self.stats["aborted"] += 1
            self.running = [reqs[i] for i in sorted(order)]
            self.ratio.current = NewTokenRatioTracker.estimate_new_token_ratio_after_retract(self.running)
            self.waiting.extend(retracted)
            self.stats["retracted"] += len(retracted)
        else:
            self.ratio.decay_step()
        reqs = self.running
        if not reqs:
            return
        # maybe_evict_swa (decode)
        interval = max(1, self.a.interval)
        if self.forward_ct % interval == 0:
            for r in reqs:
                if r.decode_batch_idx >= 1:
                    free_swa_out_of_window_slots(r, r.seqlen - 1, sliding_window_size=self.tree.sliding_window_size,
                                                 page_size=self.a.page, req_to_token_pool=self.r2t,
                                                 token_to_kv_pool_allocator=self.alloc, is_chunk_cache=False)
        if self.a.page == 1:
            out = alloc_token_slots(self.tree, len(reqs))
        else:  # alloc_for_decode's paged branch
            rows = torch.tensor([r.req_pool_idx for r in reqs], dtype=torch.int64)
            lens = torch.tensor([r.kv_committed_len for r in reqs], dtype=torch.int64)
            last = self.r2t.req_to_token[rows, lens - 1].to(torch.int64)
            out = alloc_paged_token_slots_decode(self.tree, lens + 1, lens + 1, last)
        for j, r in enumerate(reqs):
            self.r2t.req_to_token[r.req_pool_idx, r.kv_committed_len] = int(out[j])
            r.kv.kv_allocated_len += 1
            r.decode_batch_idx += 1
            r.kv_committed_len += 1
        self.stats["max_owned_swa"] = max(self.stats["max_owned_swa"], max(owned_swa_slots(r, self.a.page) for r in reqs))
        self.stats["decode_steps"] += 1
        self.stats["est_time"] += 0.008
        for r in reqs:
            r.output_ids.append(self.next_token())
            self.finish_check(r)
            if r.finished():
                release_kv_cache(r, self.tree)
                self.stats["finished"] += 1

    def pools_after_flush(self) -> dict:
        """Evict the whole tree, then compare the free slots of each pool with its size (no leak, no double free)."""
        t = self.tree
        t.evict(EvictParams(num_tokens=t.full_evictable_size(), swa_num_tokens=t.swa_evictable_size()))
        full_free, swa_free = self.alloc.full_available_size(), self.alloc.swa_available_size()
        return dict(full_free_after_flush=full_free, swa_free_after_flush=swa_free,
                    pools_whole=full_free == self.a.full and swa_free == self.a.swa)

    def busy(self) -> bool:
        """Requests waiting, running, being prefilled in chunks, or just prefilled (joining the running
        batch at the next pass)."""
        return bool(self.waiting or self.running or self.chunked_req
                    or any(not r.finished() for r in self.last_extend or []))

    def snapshot(self):
        t = self.tree
        return (f"run={len(self.running)} wait={len(self.waiting)} chunked={'y' if self.chunked_req else 'n'} "
                f"full_av={self.alloc.full_available_size()} full_evictable={t.full_evictable_size()} "
                f"swa_av={self.alloc.swa_available_size()} swa_evictable={t.swa_evictable_size()} "
                f"swa_locked={t.swa_protected_size()} ratio={self.ratio.current:.3f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="CPU replay of SGLang's scheduler with window eviction")
    p.add_argument("--scale", type=int, default=32, help="divide every size of the H200 run by this")
    p.add_argument("--requests", type=int, default=104, help="long requests submitted at once")
    p.add_argument("--cache", default="ours", choices=["ours", "stock"], help="SWAASinkRadixCache or SWARadixCache")
    p.add_argument("--control-no-split", action="store_true",
                   help="switch SGLang's leaf split on insert back off after the cache is built (the control)")
    p.add_argument("--leave-out", default="", help="comma list of the plugin's admission hooks to leave out "
                   "(controls): reserve (SWA for running requests' decode growth), one-chunk (one cut request per pass)")
    p.add_argument("--max-steps", type=int, default=200000)
    p.add_argument("--chunk-real", type=int, default=8192)
    p.add_argument("--max-running", type=int, default=4096)
    p.add_argument("--conservativeness", type=float, default=1.0)
    p.add_argument("--interval-real", type=int, default=128)
    p.add_argument("--prompt-real", type=int, default=131072, help="prompt tokens per request (before --scale)")
    p.add_argument("--new-real", type=int, default=512, help="new tokens per request (before --scale)")
    p.add_argument("--mixed", action="store_true",
                   help="mixed load: prompts log-uniform in [1, --prompt-real] (30%% sharing a prefix), 1 to "
                        "--new-real new tokens, arriving over time (--arrive-prob), random aborts (--abort-prob)")
    p.add_argument("--arrive-prob", type=float, default=0.5, help="--mixed: chance of a new request per pass")
    p.add_argument("--abort-prob", type=float, default=0.0, help="chance per pass that a client aborts a request")
    p.add_argument("--full-real", type=int, default=13_106_604,
                   help="full-pool tokens (before --scale; default as SGLang sized it on the H200); smaller "
                        "makes full-pool retraction happen")
    p.add_argument("--swa-real", type=int, default=None,
                   help="SWA-pool tokens (before --scale; default as SGLang sized it on the H200 for a 128K context)")
    p.add_argument("--check-every", type=int, default=0, help="check the invariants every this many passes; 0: off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--page", type=int, default=1, help="KV page size (tokens); pools are rounded down to whole pages")
    p.add_argument("--log-every", type=int, default=0)
    a = p.parse_args(argv)
    s = a.scale
    a.L = a.prompt_real // s
    a.wm1 = 2048 // s - 1
    a.k = -(-100 // s)
    a.chunk = a.chunk_real // s
    a.max_prefill = 16384 // s
    a.max_new = a.new_real // s
    a.full = a.full_real // s // a.page * a.page
    a.swa = (a.swa_real or int(13_106_604 * 2 * (2048 + 100 + 128 + 1) / 131648)) // s  # SGLang's sizing on the H200
    a.swa = a.swa // a.page * a.page
    a.interval = max(1, a.interval_real // s)
    a.max_reqs = a.requests + 8
    a.left_out = sorted({x for x in a.leave_out.split(",") if x})  # a list: vars(a) goes into the JSON result
    unknown = [x for x in a.left_out if x not in ("reserve", "one-chunk")]
    if unknown:
        p.error(f"--leave-out: unknown hooks {unknown}; allowed: reserve, one-chunk")
    return a


def setup(a: argparse.Namespace) -> Sim:
    """SGLang's eviction interval for the scale, the plugin's admission hooks applied, and the replay."""
    from sglang.srt.environ import envs

    envs.SGLANG_SWA_EVICTION_INTERVAL.set(a.interval)  # what the cache's decode headroom is computed from
    # the plugin registers these in every SGLang process, and SGLang applies them
    from sglang.srt.plugins.hook_registry import HookRegistry

    from swaa_sglang.serving import eviction_hooks, seam

    seam.register((*(eviction_hooks.ADMISSION_RESERVE_HOOKS if "reserve" not in a.left_out else ()),
                   *(eviction_hooks.ADMISSION_ONE_CHUNK_HOOKS if "one-chunk" not in a.left_out else ())))
    HookRegistry.apply_hooks()
    if a.page > 1:
        import cpu_paged_kernels  # tests/, beside this file

        cpu_paged_kernels.install()
    return Sim(a)


def main():
    a = parse_args()
    sim = setup(a)
    if not a.mixed:
        sim.submit(a.requests)
    t0, steps, crashed = time.time(), 0, None
    while (sim.nid < a.requests or sim.busy()) and steps < a.max_steps:
        if sim.nid < a.requests and (not sim.busy()
                                     or sim.rng.random() < a.arrive_prob):
            sim.submit(1)
        if a.abort_prob and sim.rng.random() < a.abort_prob:
            sim.abort_one()
        try:
            sim.step()
        except RuntimeError as e:  # the allocator's "Out of memory" ends a scheduler: report it as a result
            crashed = str(e).splitlines()[0]
            break
        steps += 1
        if a.check_every and steps % a.check_every == 0:
            sim.check_invariants()
        if a.log_every and steps % a.log_every == 0:
            print(f"  step {steps}: {sim.snapshot()}", flush=True)
    st = dict(sim.stats, crashed=crashed)
    if crashed is None:
        st.update(sim.pools_after_flush())
    st.update(requests=a.requests, passes=steps, cpu_s=round(time.time() - t0, 1),
              drained=not sim.busy(), config=vars(a))
    print("RESULT " + json.dumps(st), flush=True)


if __name__ == "__main__":
    main()
