"""Window eviction: the policy against the reference rule, and SGLang's real pool + radix cache.

Part 1 checks the pure policy of :mod:`attention_backends.eviction_policy` by brute force
against ``swaa_sglang.reference.visibility_mask``.

Part 2 drives SGLang 0.5.17's own ``SWAKVPool``, ``SWATokenToKVPoolAllocator``,
``ReqToTokenPool`` and our ``SWAASinkRadixCache`` (an ``SWARadixCache``) on CPU
tensors through long seeded random interleavings of request arrival (match + lock),
chunked prefill (``cache_unfinished_req``), decode with SGLang's real window eviction
(``free_swa_out_of_window_slots`` with ``Req.swa_evict_floor = K``), finish (insert),
abort, retract and tree eviction, at page sizes 1, 16 and 64 (at 16 and 64 the paged
allocator's ``alloc_extend`` / ``alloc_decode``, its two Triton kernels replaced by the
CPU stand-ins of ``tests/cpu_paged_kernels.py``), and checks after every step:

* allocator accounting for both pools, in pages (free + owned == all pages, nothing
  owned twice, nothing free and owned, no duplicate in a free list: a double free
  shows here); every node and request lays its slots out in whole pages, a full page
  maps to one SWA page at the same offsets, and only slots that hold KV map at all;
* the radix tree: tombstone flags agree with the full->SWA mapping, SGLang's size
  counters agree with the tree, nodes are whole pages, no node straddles the sink boundary;
* every live request still has its sinks and the window its next query reads, and
  their KV *content* is right: every KV write stores an id of the exact token prefix
  it was computed from, so a stale, freed-and-reused or wrongly shared slot is caught;
* every cache hit equals the oracle cut-back (:func:`usable_prefix_len` over the
  tree's presence) and hands back exactly the KV a cold prefill computes.

A control run with SGLang's stock ``SWARadixCache`` (no sink handling) must fail
these checks, which shows that they can fail.
"""

from __future__ import annotations

import dataclasses
import logging
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attention_backends.eviction_policy import (
    freeable_ranges,
    needed_for_prefix,
    needed_ranges,
    sglang_evicted_frontier,
    sglang_window,
    sink_floor,
    usable_prefix_len,
)
from swaa_sglang import SWAAConfig, visibility_mask


def _positions(ranges) -> set[int]:
    return {p for lo, hi in ranges for p in range(lo, hi)}


# -- part 1: policy -------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 40), st.integers(0, 40), st.integers(1, 12), st.integers(0, 8), st.integers(0, 6)
)
def test_needed_ranges_is_what_future_queries_read(kv_len, nq, window, keep_first, extra):
    next_query = min(nq, kv_len)
    config = SWAAConfig(sliding_window_size=window, keep_first=keep_first)
    # Every query still to run: the rest of the prompt/chunk and some later tokens.
    queries = torch.arange(next_query, kv_len + 1 + extra)
    keys = torch.arange(kv_len)
    read = visibility_mask(config, 0, queries, keys).any(0) if kv_len else torch.zeros(0, dtype=torch.bool)
    expected = {int(j) for j in torch.nonzero(read).flatten()}
    got = _positions(needed_ranges(kv_len, next_query, window, keep_first))
    assert got == expected
    assert _positions(freeable_ranges(kv_len, next_query, window, keep_first)) == set(range(kv_len)) - expected
    assert len(freeable_ranges(kv_len, next_query, window, keep_first)) <= 1


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(2, 10), st.integers(0, 6))
def test_usable_prefix_len_is_the_longest_exact_reuse(data, window, keep_first):
    n = data.draw(st.integers(0, 30))
    present = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    boundaries = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=8))) | {n})
    config = SWAAConfig(sliding_window_size=window, keep_first=keep_first)
    best = 0
    for p in boundaries:
        if p == 0:
            continue
        # New tokens at positions p .. p + W + k read these keys of the prefix.
        q = torch.arange(p, p + window + keep_first + 2)
        read = visibility_mask(config, 0, q, torch.arange(p)).any(0)
        if all(present[j] for j in torch.nonzero(read).flatten().tolist()):
            best = max(best, p)
    assert usable_prefix_len(present, boundaries, window, keep_first) == best


def test_policy_edges():
    assert sink_floor(0, 16) == 0 and sink_floor(1, 16) == 16 and sink_floor(16, 16) == 16 and sink_floor(3, 1) == 3
    assert sglang_window(4096) == 4095
    with pytest.raises(ValueError, match="sliding_window_size"):
        sglang_window(1)
    assert needed_for_prefix(10, 4, 2) == [(0, 2), (7, 10)]
    assert needed_ranges(10, 10, 4, 0) == [(7, 10)]
    # SGLang's frontier (radix cache, page 1) with the floor at K never passes below K and
    # frees exactly up to the window of the query at pre_len.
    assert sglang_evicted_frontier(0, 20, 4, 1, 0, 3) == 17
    assert sglang_evicted_frontier(0, 5, 4, 1, 0, 3) == 3
    # Page 16: the threshold keeps max(window, page) and page-aligns down.
    assert sglang_evicted_frontier(0, 100, 8, 16, 0, 16) == 80


# -- part 2: SGLang's real classes on CPU -------------------------------------------------
# sglang is a hard dependency (pinned): a broken import must fail here, not skip part 2
from sglang.srt.managers.schedule_batch import ReqKvInfo
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, MatchPrefixParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.common import free_swa_out_of_window_slots
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixKey
from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
from sglang.srt.mem_cache.swa_radix_cache import SWARadixCache

import cpu_paged_kernels
from attention_backends.radix_cache import SWAASinkRadixCache

LAYER_TAG = 1000  # layer i stores a position's content id + LAYER_TAG * i: a read from the wrong layer shows


@pytest.fixture(autouse=True)
def _cpu_paged_kernels():
    """SGLang's paged allocator computes slots with two Triton kernels (no CPU driver): CPU stand-ins
    for the kernels alone (tests/cpu_paged_kernels.py); its page bookkeeping stays SGLang's."""
    with cpu_paged_kernels.patched():
        yield


def test_cpu_paged_kernels_lay_out_pages_as_the_triton_kernels():
    """The stand-ins against the kernels' contract (alloc_extend_kernel / alloc_decode_kernel): a request's
    new tokens first fill the page of last_loc (last_loc + 1, ...), then take whole pages from the free
    list in order, request after request, position j at offset j % P; the allocator consumes those pages."""
    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator

    rng = random.Random(0)
    for page in (16, 64):
        for _ in range(30):
            alloc = PagedTokenToKVPoolAllocator(64 * page, page, torch.float32, "cpu", None, False)
            alloc.free_pages = alloc.free_pages[torch.randperm(len(alloc.free_pages))]
            pre = [rng.randrange(0, 4 * page) for _ in range(rng.randrange(1, 5))]
            seq = [p + rng.randrange(1, 3 * page) for p in pre]
            # a prefix ending mid-page sits at some page's matching offset (it continues there)
            last = [-1 if p == 0 else 1000 * page + (p - 1) % page for p in pre]
            free = alloc.free_pages.tolist()
            out = alloc.alloc_extend(torch.tensor(pre), torch.tensor(pre), torch.tensor(seq), torch.tensor(seq),
                                     torch.tensor(last), sum(seq) - sum(pre)).tolist()
            want, taken = [], iter(free)
            for p, q, lo in zip(pre, seq, last):
                first = min(q, _ceil(p, page))
                want += [lo + 1 + i for i in range(first - p)]
                page_id = None
                for j in range(first, q):
                    if j % page == 0:
                        page_id = next(taken)
                    want.append(page_id * page + j % page)
            assert out == want
            used = sum(_ceil(q, page) - _ceil(p, page) for p, q in zip(pre, seq)) // page
            assert alloc.free_pages.tolist() == free[used:]
            ends = torch.tensor([q - p for p, q in zip(pre, seq)]).cumsum(0)
            last = torch.tensor(out)[ends - 1]  # each request's last slot; then one decode step each
            free = alloc.free_pages.tolist()
            lens = torch.tensor(seq) + 1
            got = alloc.alloc_decode(lens, lens, last).tolist()
            taken = iter(free)
            assert got == [next(taken) * page if q % page == 0 else int(lo) + 1 for q, lo in zip(seq, last)]
            assert alloc.free_pages.tolist() == free[sum(q % page == 0 for q in seq):]


class Violation(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Violation(msg)


def _ceil(n: int, page: int) -> int:
    return -(-n // page) * page


@dataclasses.dataclass
class Workload:
    """The random run's sizes, in tokens. The defaults are page 1's (the run verified first); :func:`workload`
    scales them for larger pages so that pools hold a few dozen pages and requests several."""

    full_size: int = 160
    swa_size: int = 70
    max_reqs: int = 5
    ctx: int = 160
    docs: int = 3  # shared documents that prompts start with (prefix hits)
    doc_len: int = 60
    prompt_max: int = 45  # prompt length in [2, prompt_max)
    new_max: int = 25  # max_new in [1, new_max)
    burst: int = 1  # decode iterations per decode step, in [1, burst]
    evict_full: int = 20  # a random tree eviction asks for [0, evict_full) full and [0, evict_swa) SWA tokens
    evict_swa: int = 30
    # chance that a request's prompt goes to the tree when its prefill ends (SGLang's
    # process_batch_result_prefill always does; 0: the request keeps its prompt's KV until it ends)
    cache_prompt: float = 0.0
    # chance that a finished request is followed by a next turn: its whole sequence and a few new tokens
    # (a chat; the match then runs through the part window eviction tombstoned)
    follow_up: float = 0.0


def workload(page: int, window: int, **overrides) -> Workload:
    if page == 1:
        return Workload(**overrides)
    # Generations reach past window + 2 pages: only then does SGLang free a page behind a cached prompt.
    new_max = 3 * page + 2 * max(window, page)
    base = dict(full_size=40 * page, swa_size=_ceil(12 * page + 4 * window, page),
                ctx=_ceil(8 * page + new_max, page) + page, doc_len=12 * page, prompt_max=8 * page, new_max=new_max,
                burst=page, evict_full=2 * page, evict_swa=3 * page, cache_prompt=0.75, follow_up=0.5)
    return Workload(**{**base, **overrides})


class SimReq:
    """The attributes of ``sglang...schedule_batch.Req`` that the cache and eviction code read."""

    def __init__(self, rid, prompt, max_new, floor):
        self.rid = rid
        self.origin_input_ids = list(prompt)
        self.output_ids: list[int] = []
        self.max_new = max_new
        self.extra_key = None
        self.req_pool_idx = None
        self.cache_protected_len = 0
        self.swa_evict_floor = floor
        self.kv = None
        self.last_node = None
        self.swa_uuid_for_lock = None
        self.swa_prefix_lock_released = False
        self.prefix_indices = None
        self.filled = 0  # positions with KV written
        self.hit = 0  # the cached prefix it was admitted with
        self.tags: list[float] = []  # content id of every prefix of tokens (Sim.tags)
        self.state = "prefill"

    @property
    def tokens(self):
        return self.origin_input_ids + self.output_ids

    def get_fill_ids(self):
        return self.tokens[: self.filled]


class Sim:
    """SGLang's pool, allocator and radix cache at page size ``page``, driven through random request lives.

    Allocation is SGLang's: ``alloc`` at page 1 (``alloc_token_slots``); ``alloc_extend`` /
    ``alloc_decode`` of the paged allocator otherwise, with ``last_loc`` the full slot of the position
    before the new tokens, or -1 (``alloc_for_extend`` / ``alloc_for_decode``).
    """

    def __init__(self, seed, window, keep_first, chunk, cache_cls=SWAASinkRadixCache, page=1, pattern=(1, 0),
                 **overrides):
        """``pattern``: SGLang's hybrid_layer_pattern (1: the layer's KV in the SWA pool); by default layer 0
        windowed (SWA pool) and layer 1 full or FA decode (full pool)."""
        self.rng = random.Random(seed)
        self.W, self.k, self.C, self.P = window, keep_first, chunk, page
        self.wl = wl = workload(page, window, **overrides)
        assert wl.full_size % page == 0 and wl.swa_size % page == 0
        self.K = sink_floor(keep_first, page)
        self.swa_layers = [i for i, p in enumerate(pattern) if p]
        self.full_layers = [i for i, p in enumerate(pattern) if not p]
        self.pool = SWAKVPool(
            size=wl.full_size, size_swa=wl.swa_size, page_size=page, dtype=torch.float32, head_num=1, head_dim=1,
            swa_attention_layer_ids=self.swa_layers, full_attention_layer_ids=self.full_layers, device="cpu",
        )
        for layer in range(len(pattern)):  # stale KV everywhere: nothing reads a slot it did not write
            for buf in self.pool.get_kv_buffer(layer):
                buf.fill_(-1.0)
        self.alloc = SWATokenToKVPoolAllocator(
            wl.full_size, wl.swa_size, page, torch.float32, "cpu", self.pool, need_sort=False
        )
        self.r2t = ReqToTokenPool(wl.max_reqs, wl.ctx, "cpu", False)
        params = CacheInitParams(
            disable=False, req_to_token_pool=self.r2t, token_to_kv_pool_allocator=self.alloc,
            page_size=page, sliding_window_size=sglang_window(window),
        )
        self.tc_params = params
        self.tc = cache_cls(params, keep_first) if cache_cls is SWAASinkRadixCache else cache_cls(params)
        self.ours = cache_cls is SWAASinkRadixCache
        self.rows = list(range(1, wl.max_reqs + 1))
        self.live: list[SimReq] = []
        self.waiting: list[SimReq] = []
        self.ids: dict[tuple, int] = {}
        self.docs = [[self.rng.randrange(30) for _ in range(wl.doc_len)] for _ in range(wl.docs)]
        self.ctx = wl.ctx
        self.next_rid = 0
        self.stats = dict(hits=0, hit_tokens=0, cut=0, sink_cut=0, retract=0, finish=0, abort=0, evict=0, decode=0,
                          window_freed=0, tree_swa_evicted=0, tree_full_evicted=0, cached_prompts=0,
                          mid_page_allocs=0, new_page_decodes=0, next_turns=0)

    # -- content ids: KV at position j is a function of tokens[: j + 1] ----------------
    def tags(self, req) -> list[float]:
        """Id of every prefix of the request's tokens (same prefix, same id; built incrementally)."""
        toks, tags = req.tokens, req.tags
        for j in range(len(tags), len(toks)):
            parent = tags[j - 1] if j else 0.0
            tags.append(float(self.ids.setdefault((parent, toks[j]), len(self.ids) + 1)))
        return tags

    def buf(self, layer):
        return self.pool.get_key_buffer(layer)[:, 0, 0]

    def write(self, req, lo, hi):
        full = self.r2t.req_to_token[req.req_pool_idx, lo:hi].long()
        swa = self.alloc.full_to_swa_index_mapping[full]
        check(bool((swa > 0).all()), f"req {req.rid}: no SWA slot for new tokens at [{lo}, {hi})")
        t = torch.tensor(self.tags(req)[lo:hi], dtype=torch.float32)
        for layer in self.full_layers:
            self.buf(layer)[full] = t + LAYER_TAG * layer
        for layer in self.swa_layers:
            self.buf(layer)[swa] = t + LAYER_TAG * layer

    def read_ok(self, req, positions, swa_layer: bool, what: str):
        """The KV at these positions, as every windowed (``swa_layer``) or every full-pool layer reads it, is
        the KV of this request's own prefix."""
        if isinstance(positions, range):
            pos = torch.arange(positions.start, positions.stop, dtype=torch.long)
        else:
            pos = torch.as_tensor(sorted(positions), dtype=torch.long)
        if pos.numel() == 0:
            return
        full = self.r2t.req_to_token[req.req_pool_idx, pos].long()
        want = torch.tensor(self.tags(req), dtype=torch.float32)[pos]
        if swa_layer:
            swa = self.alloc.full_to_swa_index_mapping[full]
            gone = pos[swa <= 0]
            check(gone.numel() == 0, f"{what}: req {req.rid}: the windowed layer reads positions {gone.tolist()}, whose SWA KV is gone")
        layers, slots = (self.swa_layers, swa) if swa_layer else (self.full_layers, full)
        for layer in layers:
            bad = pos[self.buf(layer)[slots] != want + LAYER_TAG * layer]
            check(bad.numel() == 0, f"{what}: req {req.rid}: positions {bad.tolist()} hold KV of another prefix "
                                    f"({'SWA' if swa_layer else 'full'} pool, layer {layer})")

    def compute(self, req, lo, hi, what):
        """Run queries at positions [lo, hi): check every cached key they read, then write their KV."""
        self.read_ok(req, _positions(needed_ranges(lo, lo, self.W, self.k)), True, what)
        self.read_ok(req, range(lo), False, what)
        self.write(req, lo, hi)

    # -- allocation under pressure ---------------------------------------------------------
    def evict_tree(self, num_tokens, swa_num_tokens):
        res = self.tc.evict(EvictParams(num_tokens=num_tokens, swa_num_tokens=swa_num_tokens))
        self.stats["tree_full_evicted"] += res.num_tokens_evicted
        self.stats["tree_swa_evicted"] += res.swa_num_tokens_evicted

    def alloc_tokens(self, n, owner):
        """Page 1: ``alloc`` (``alloc_token_slots``); on failure evict the tree, then retract others."""
        for attempt in range(3):
            out = self.alloc.alloc(n)
            if out is not None:
                return out
            if attempt == 0:
                self.evict_tree(n, n)
            else:
                others = [r for r in self.live if r is not owner and r.state == "decode"]
                if not others:
                    return None
                self.retract(self.rng.choice(others))
        return None

    def alloc_kv(self, req, lo, hi, decode):
        """Full slots for positions [lo, hi) of ``req`` (its row holds [0, lo)), or None (out of memory)."""
        if self.P == 1:
            return self.alloc_tokens(hi - lo, req)
        P = self.P
        pages = _ceil(hi, P) // P - _ceil(lo, P) // P
        for attempt in range(3):
            # The SWA allocator takes the full pages before it finds the SWA pool short (they would leak,
            # SGLang raises there): like the scheduler, make room before allocating.
            if self.alloc.new_pages_available(pages, pages):
                return self.alloc_paged(req, lo, hi, decode)
            if attempt == 0:
                self.evict_tree(pages * P, pages * P)
            else:
                others = [r for r in self.live if r is not req and r.state == "decode"]
                if not others:
                    return None
                self.retract(self.rng.choice(others))
        return None

    def alloc_paged(self, req, lo, hi, decode):
        row = req.req_pool_idx
        last_loc = self.r2t.req_to_token[row, lo - 1 : lo].long() if lo > 0 else torch.tensor([-1])
        if lo % self.P:
            # The kernels continue the page of last_loc in both pools, through the SWA mapping.
            self.stats["mid_page_allocs"] += 1
            check(int(self.alloc.full_to_swa_index_mapping[last_loc]) > 0,
                  f"req {req.rid}: the SWA slot of position {lo - 1}, whose page the new tokens continue, is gone")
        elif decode:
            self.stats["new_page_decodes"] += 1
        if decode:  # alloc_for_decode: seq_lens + 1, last_loc = slot of seq_lens - 1
            assert hi == lo + 1
            seq = torch.tensor([hi])
            out = self.alloc.alloc_decode(seq, seq, last_loc)
        else:
            pre, seq = torch.tensor([lo]), torch.tensor([hi])
            out = self.alloc.alloc_extend(pre, pre, seq, seq, last_loc, hi - lo)
        check(out is not None and len(out) == hi - lo, f"req {req.rid}: the allocator failed with pages available")
        return out

    # -- request life cycle ---------------------------------------------------------------
    def new_request(self):
        doc = self.rng.choice(self.docs)
        n = self.rng.randrange(2, self.wl.prompt_max)
        prompt = doc[: self.rng.randrange(1, n + 1)]
        prompt += [self.rng.randrange(30) for _ in range(n - len(prompt))]
        req = SimReq(self.next_rid, prompt, self.rng.randrange(1, self.wl.new_max), self.K)
        self.next_rid += 1
        self.waiting.append(req)

    def next_turn(self, req):
        prompt = req.tokens + [self.rng.randrange(30) for _ in range(self.rng.randrange(1, 2 * self.P))]
        if len(prompt) < self.ctx - self.P:
            self.waiting.append(SimReq(self.next_rid, prompt, self.rng.randrange(1, self.wl.new_max), self.K))
            self.next_rid += 1
            self.stats["next_turns"] += 1

    def oracle_match(self, key_tokens):
        """Longest exact reuse by the policy, from the tree as it is (read-only walk, whole pages)."""
        P = self.P
        node, present, bounds = self.tc.root_node, [], [0]
        key = RadixKey(key_tokens).page_aligned(P)
        while len(key) > 0:
            child = node.children.get(key.child_key(P))
            if child is None:
                break
            m = child.key.match(key, page_size=P)
            present += [not child.swa_tombstone] * m
            bounds.append(len(present))
            if m < len(child.key):
                break
            node, key = child, key[m:]
        # The policy, and SGLang's own rule (the window before the cut, no sinks): what the sinks cut.
        window_only = usable_prefix_len(present, bounds, self.W, 0)
        return usable_prefix_len(present, bounds, self.W, self.k), len(present), window_only

    def admit(self, req):
        if not self.rows or len(req.tokens) >= self.ctx:
            return False
        key = req.tokens[:-1]
        want, raw, window_only = self.oracle_match(key)
        m = self.tc.match_prefix(MatchPrefixParams(key=RadixKey(key)))
        p = len(m.device_indices)
        check(p == want, f"match: cache gives a {p}-token prefix, the policy allows exactly {want} (raw match {raw})")
        req.req_pool_idx = self.rows.pop()
        res = self.tc.inc_lock_ref(m.last_device_node)
        req.last_node, req.swa_uuid_for_lock = m.last_device_node, res.swa_uuid_for_lock
        self.r2t.req_to_token[req.req_pool_idx, :p] = m.device_indices.to(torch.int32)
        req.cache_protected_len = req.filled = req.hit = p
        req.kv = ReqKvInfo(kv_allocated_len=p, swa_evicted_seqlen=0)
        # A hit must hold exactly what a cold prefill computes: check what the new tokens read.
        self.read_ok(req, _positions(needed_for_prefix(p, self.W, self.k)), True, "hit")
        self.read_ok(req, range(p), False, "hit")
        self.stats["hits"] += p > 0
        self.stats["hit_tokens"] += p
        self.stats["cut"] += p < raw
        self.stats["sink_cut"] += p < window_only
        self.live.append(req)
        return True

    def prefill_step(self, req):
        total = len(req.tokens)
        n = min(self.C, total - req.filled)
        slots = self.alloc_kv(req, req.filled, req.filled + n, decode=False)
        if slots is None or req not in self.live:
            return
        self.r2t.req_to_token[req.req_pool_idx, req.filled : req.filled + n] = slots.to(torch.int32)
        lo = req.filled
        req.filled += n
        req.kv.kv_allocated_len = req.filled
        self.compute(req, lo, req.filled, "prefill")
        if req.filled < total:
            self.tc.cache_unfinished_req(req)
            check(req.cache_protected_len <= req.filled, "cache_unfinished_req protected more than the request filled")
        else:
            req.state = "decode"
            req.output_ids.append(self.rng.randrange(30))  # the token sampled from the last chunk
            if self.wl.cache_prompt and self.rng.random() < self.wl.cache_prompt:
                self.tc.cache_unfinished_req(req)  # process_batch_result_prefill: the prompt goes to the tree
                self.stats["cached_prompts"] += 1

    def decode_step(self, req, iterations=None):
        """``iterations`` decode iterations of one request (random in [1, burst] by default)."""
        if iterations is None:
            iterations = self.rng.randrange(1, self.wl.burst + 1) if self.wl.burst > 1 else 1
        for _ in range(iterations):
            if req not in self.live or not self.decode_one(req):
                return

    def decode_one(self, req) -> bool:
        if len(req.tokens) >= self.ctx - 1 or len(req.output_ids) >= req.max_new:
            self.release(req, is_insert=True)
            self.stats["finish"] += 1
            if self.wl.follow_up and self.rng.random() < self.wl.follow_up:
                self.next_turn(req)
            return False
        # ScheduleBatch.maybe_evict_swa -> _evict_swa, as alloc_for_decode does (every step).
        before = self.alloc.swa_available_size()
        free_swa_out_of_window_slots(
            req, len(req.tokens) - 1, sliding_window_size=self.tc.sliding_window_size, page_size=self.P,
            req_to_token_pool=self.r2t, token_to_kv_pool_allocator=self.alloc, is_chunk_cache=False,
        )
        self.stats["window_freed"] += self.alloc.swa_available_size() - before
        slot = self.alloc_kv(req, req.filled, req.filled + 1, decode=True)
        if slot is None or req not in self.live:
            return False
        pos = req.filled
        self.r2t.req_to_token[req.req_pool_idx, pos] = slot.to(torch.int32)[0]
        req.filled += 1
        req.kv.kv_allocated_len = req.filled
        self.compute(req, pos, pos + 1, "decode")
        req.output_ids.append(self.rng.randrange(30))
        self.stats["decode"] += 1
        return True

    def release(self, req, is_insert):
        """sglang.srt.mem_cache.common.release_kv_cache: cache_finished_req, then free the row."""
        self.tc.cache_finished_req(req, is_insert=is_insert, kv_len_to_handle=req.filled)
        self.r2t.req_to_token[req.req_pool_idx].zero_()
        self.rows.append(req.req_pool_idx)
        req.req_pool_idx = None
        req.kv = None
        self.live.remove(req)

    def retract(self, req):
        self.release(req, is_insert=False)
        again = SimReq(req.rid, req.tokens, max(1, req.max_new - len(req.output_ids)), req.swa_evict_floor)
        self.waiting.append(again)
        self.stats["retract"] += 1

    # -- invariants -------------------------------------------------------------------
    def whole_pages(self, slots: torch.Tensor, start: int) -> bool:
        """Slots of positions [start, start + len) lie as the paged allocator lays them: position j at
        offset j % P of its page, one page per page of positions."""
        P = self.P
        if P == 1 or slots.numel() == 0:
            return True
        pos = torch.arange(start, start + slots.numel())
        if not bool((slots % P == pos % P).all()):
            return False
        page, block = slots // P, pos // P
        return bool(((page[1:] == page[:-1]) | (block[1:] != block[:-1])).all())

    def check_all(self):
        """Both pools balance (in pages), the tree agrees with the SWA mapping, requests read the right KV.

        The allocators' free lists hold page ids (slot ids at page 1; page 0 is reserved). A full page is
        owned by one tree node or one request; its slots that hold KV map to one SWA page at the same
        offsets, and every slot that maps to an SWA slot holds KV.
        """
        a, tc, P = self.alloc, self.tc, self.P
        mapping = a.full_to_swa_index_mapping
        fa, sa = a.full_attn_allocator, a.swa_attn_allocator
        full_free = torch.cat([fa.free_pages, fa.release_pages]).tolist()
        swa_free = torch.cat([sa.free_pages, sa.release_pages]).tolist()
        check(len(set(full_free)) == len(full_free), "full pool: a page is in the free list twice (double free)")
        check(len(set(swa_free)) == len(swa_free), "SWA pool: a page is in the free list twice (double free)")
        check(0 not in full_free and 0 not in swa_free, "the reserved page 0 was freed")
        full_pages, swa_pages = a.size_full // P, a.size_swa // P
        check(all(1 <= p <= full_pages for p in full_free), "full pool: a free page id out of range")
        check(all(1 <= p <= swa_pages for p in swa_free), "SWA pool: a free page id out of range")

        tree_owned: list[int] = []
        owner_pages: list[int] = []  # full pages, once per owner (tree node or request)
        nodes, stack = [], [(c, 0) for c in tc.root_node.children.values()]  # (node, its first position)
        while stack:
            n, start = stack.pop()
            nodes.append((n, start))
            stack.extend((c, start + len(n.value)) for c in n.children.values())
        full_tokens = swa_tokens = full_prot = swa_prot = 0
        for n, start in nodes:
            vals = n.value.tolist()
            tree_owned += vals
            check(start % P == 0 and len(vals) % P == 0 and len(n.key) == len(vals),
                  f"tree: node {n.id} at [{start}, {start + len(vals)}) is not whole pages")
            check(self.whole_pages(n.value, start), f"tree: node {n.id}'s slots are not laid out in whole pages")
            owner_pages += sorted({v // P for v in vals})
            mapped = mapping[n.value.long()] > 0
            if n.swa_tombstone:
                check(not bool(mapped.any()), f"tree: tombstone node {n.id} still holds SWA KV (invisible to accounting)")
            else:
                check(bool(mapped.all()), f"tree: live node {n.id} lost SWA KV behind the tree's back")
                swa_tokens += len(vals)
                swa_prot += len(vals) if n.swa_lock_ref > 0 else 0
            full_tokens += len(vals)
            full_prot += len(vals) if n.full_lock_ref > 0 else 0
            check(n.swa_lock_ref >= 0 and n.full_lock_ref >= 0, f"tree: negative lock on node {n.id}")
            if self.ours and self.K:
                check(not (start < self.K < start + len(vals)), f"tree: node {n.id} straddles the sink boundary")
        check(len(set(tree_owned)) == len(tree_owned), "tree: a slot is owned by two nodes")
        check(tc.full_evictable_size() + tc.full_protected_size() == full_tokens, "tree: full size counters drifted")
        check(tc.full_protected_size() == full_prot, "tree: full protected size drifted")
        check(tc.swa_evictable_size() + tc.swa_protected_size() == swa_tokens, "tree: SWA size counters drifted")
        check(tc.swa_protected_size() == swa_prot, "tree: SWA protected size drifted")

        tree_set = set(tree_owned)
        req_owned: list[int] = []
        for r in self.live:
            row = self.r2t.req_to_token[r.req_pool_idx]
            check(r.cache_protected_len % P == 0,
                  f"req {r.rid}: cache_protected_len {r.cache_protected_len} not page-aligned")
            prefix = row[: r.cache_protected_len].tolist()
            check(all(s in tree_set for s in prefix), f"req {r.rid}: protected prefix slot not in the tree")
            own = row[r.cache_protected_len : r.filled].long()
            check(self.whole_pages(own, r.cache_protected_len),
                  f"req {r.rid}: its slots are not laid out in whole pages")
            req_owned += own.tolist()
            owner_pages += sorted({v // P for v in own.tolist()})
            # Sinks and the window its next query reads: present and with the right content.
            self.read_ok(r, _positions(needed_ranges(r.filled, r.filled, self.W, self.k)), True, "live")
            if self.ours:
                for n in tc._sink_nodes(r.last_node):
                    check(n.swa_lock_ref > 0, f"req {r.rid}: sink node {n.id} on its path is not SWA-locked")
        owned = tree_owned + req_owned  # slots holding KV
        check(len(set(owned)) == len(owned), "a full slot is owned twice (tree and request, or two requests)")
        check(len(set(owner_pages)) == len(owner_pages),
              "a full page is owned twice (tree and request, or two requests)")
        check(not (set(owner_pages) & set(full_free)), "a full page is both owned and free")
        check(len(full_free) + len(owner_pages) == full_pages,
              f"full pool leak: free {len(full_free)} + owned {len(owner_pages)} != {full_pages} pages")
        holds_kv = torch.zeros(mapping.numel() - 1, dtype=torch.bool)
        holds_kv[torch.tensor(owned, dtype=torch.long)] = True
        stray = torch.nonzero((mapping[:-1] > 0) & ~holds_kv).flatten().tolist()
        check(not stray, f"full slots {stray[:8]} that hold no KV (free, or past a request's end) map to SWA slots")
        full_slots = torch.tensor(owned, dtype=torch.long)
        swa_slots = mapping[full_slots]
        full_slots, swa_slots = full_slots[swa_slots > 0], swa_slots[swa_slots > 0]
        check(swa_slots.unique().numel() == swa_slots.numel(), "two full slots map to one SWA slot")
        check(bool((swa_slots % P == full_slots % P).all()), "a full slot maps to an SWA slot at another page offset")
        pair = (full_slots // P * (swa_pages + 1) + swa_slots // P).unique()  # distinct (full page, SWA page)
        full_page, swa_page = pair // (swa_pages + 1), pair % (swa_pages + 1)
        check(full_page.unique().numel() == full_page.numel(), "a full page maps to two SWA pages")
        check(swa_page.unique().numel() == swa_page.numel(), "two full pages map to one SWA page")
        swa_used = swa_page.tolist()
        check(not (set(swa_used) & set(swa_free)), "an SWA page is both in use and free")
        check(len(swa_free) + len(swa_used) == swa_pages,
              f"SWA pool leak: free {len(swa_free)} + used {len(swa_used)} != {swa_pages} pages")

    # -- driver --------------------------------------------------------------------------
    def step(self):
        r = self.rng.random()
        if r < 0.15 or (not self.live and not self.waiting):
            self.new_request()
        elif r < 0.30 and self.waiting:
            req = self.waiting[0]
            if self.admit(req):
                self.waiting.pop(0)
        elif r < 0.80 and self.live:
            req = self.rng.choice(self.live)
            (self.prefill_step if req.state == "prefill" else self.decode_step)(req)
        elif r < 0.85 and self.live:
            self.release(self.rng.choice(self.live), is_insert=self.rng.random() < 0.5)
            self.stats["abort"] += 1
        elif r < 0.88 and any(q.state == "decode" for q in self.live):
            self.retract(self.rng.choice([q for q in self.live if q.state == "decode"]))
        elif r < 0.95:
            self.evict_tree(self.rng.randrange(0, self.wl.evict_full), self.rng.randrange(0, self.wl.evict_swa))
            self.stats["evict"] += 1
        else:
            self.new_request()
        self.check_all()

    def drain(self):
        for r in list(self.live):
            self.release(r, is_insert=True)
            self.check_all()
        self.evict_tree(10**6, 10**6)
        self.check_all()
        check(self.tc.full_protected_size() == 0 and self.tc.swa_protected_size() == 0, "locks left after all requests ended")
        check(self.alloc.full_available_size() == self.alloc.size_full, "full pool not whole after draining")
        check(self.alloc.swa_available_size() == self.alloc.size_swa, "SWA pool not whole after draining")
        self.tc.sanity_check()  # SGLang's own LRU / size check (idle only)


CASES = [  # (window W, keep_first k, prefill chunk), page 1
    (4, 3, 5), (6, 1, 3), (3, 5, 100), (8, 4, 7), (5, 0, 4), (2, 2, 2),
]

# (page P, window W, keep_first k, prefill chunk): windows below one page and over two, sinks inside the
# first page, exactly one page and over several, chunks that end mid-page (the kernels then continue the
# page of the position before, in both pools) and whole pages.
PAGED_CASES = [
    (16, 4, 3, 37),
    (16, 40, 20, 24),
    (16, 17, 16, 100),
    (16, 24, 0, 16),
    (16, 2, 35, 7),
    (64, 8, 5, 100),
    (64, 150, 70, 64),
    (64, 64, 1, 29),
]
FAST_PAGED = {(16, 4, 3, 37), (64, 8, 5, 100)}  # one per page size outside the slow marker


def _run(sim, steps):
    for _ in range(steps):
        sim.step()
    sim.drain()
    return sim.stats


def _total(stats_list):
    total: dict[str, int] = {}
    for stats in stats_list:
        for name, v in stats.items():
            total[name] = total.get(name, 0) + v
    return total


@pytest.mark.parametrize("window,keep_first,chunk", CASES)
def test_sink_radix_cache_random_interleavings(window, keep_first, chunk):
    total = _total(_run(Sim(seed * 1000 + window * 10 + keep_first, window, keep_first, chunk), 700)
                   for seed in range(3))
    # The runs must have exercised what they claim to test.
    assert total["hits"] > 15 and total["decode"] > 150 and total["finish"] > 5, total
    assert total["abort"] > 5 and total["retract"] > 5 and total["evict"] > 50, total
    assert total["window_freed"] > 0 and total["tree_swa_evicted"] > 0, total


@pytest.mark.parametrize(
    "page,window,keep_first,chunk",
    [pytest.param(*c, id="p{}-{}-{}-{}".format(*c), marks=() if c in FAST_PAGED else pytest.mark.slow)
     for c in PAGED_CASES],
)
def test_sink_radix_cache_random_interleavings_paged(page, window, keep_first, chunk):
    """The same runs at page 16 and 64: SGLang's paged allocator (alloc_extend / alloc_decode), page-aligned
    tree and matches, window eviction in whole pages, the unaligned tail of a request freed on its end."""
    total = _total(_run(Sim(page * 100_000 + seed * 1000 + window * 10 + keep_first, window, keep_first, chunk,
                            page=page), 700) for seed in range(3))
    assert total["hits"] > 15 and total["decode"] > 150 * page // 16 and total["finish"] > 5, total
    assert total["abort"] > 5 and total["retract"] > 5 and total["evict"] > 50, total
    # Window eviction freed whole pages during decode, the tree evicted SWA KV, prompts went to the tree
    # after their prefill, and allocations continued a partly filled page and opened new ones in decode.
    assert total["window_freed"] >= 4 * page and total["window_freed"] % page == 0, total
    assert total["tree_swa_evicted"] > 0 and total["cached_prompts"] > 5 and total["next_turns"] > 5, total
    assert total["mid_page_allocs"] > 100 and total["new_page_decodes"] > 10, total


def test_sink_radix_cache_cuts_back_and_reuses():
    """Across the cases, some hits are cut back (sinks or window gone) and many are reused."""
    cut = hit = retract = 0
    for window, keep_first, chunk in CASES:
        if keep_first == 0:
            continue
        sim = Sim(7 + window, window, keep_first, chunk, swa_size=45)
        for _ in range(600):
            sim.step()
        sim.drain()
        cut, hit, retract = cut + sim.stats["cut"], hit + sim.stats["hits"], retract + sim.stats["retract"]
    assert cut > 0 and hit > 50 and retract > 0, (cut, hit, retract)


@pytest.mark.parametrize("page", [16, pytest.param(64, marks=pytest.mark.slow)])
def test_sink_radix_cache_cuts_back_and_reuses_paged(page):
    """The same at pages 16 and 64 (the sink rule's own cut, rare in random runs since SGLang's LRU frees
    sinks before the window after them, is driven in test_match_cuts_back_before_a_freed_sink)."""
    cases = [(w, k, c) for p, w, k, c in PAGED_CASES if p == page and k > 0]
    total = _total(_run(Sim(page + 7 + window, window, keep_first, chunk, page=page), 600)
                   for window, keep_first, chunk in cases)
    assert total["cut"] > 0 and total["hits"] > 10 * len(cases) and total["retract"] > 0, total


@pytest.mark.parametrize("page,window,keep_first,chunk,overrides", [
    (1, 4, 3, 5, dict(swa_size=45)), (16, 4, 3, 37, {}), (16, 40, 20, 24, {}), (64, 8, 5, 100, {}),
])
def test_stock_swa_radix_cache_fails_the_checks_with_sinks(page, window, keep_first, chunk, overrides):
    """Control: SGLang's SWARadixCache with the same floor does not keep sinks correctly (at every page size)."""
    failures = []
    for seed in range(4):
        sim = Sim(seed, window, keep_first, chunk, cache_cls=SWARadixCache, page=page, **overrides)
        try:
            for _ in range(600):
                sim.step()
        except Violation as e:
            failures.append(str(e))
        except AssertionError as e:  # SGLang's own asserts (e.g. locking a tombstoned node)
            failures.append(f"sglang assert: {e}")
    assert failures, "the invariant checks did not catch the stock cache losing sinks"


def _serve(sim, prompt, decode_steps):
    """One request alone: admitted (admit() checks its hit length against the oracle), prefilled and
    decoded ``decode_steps`` steps, every step checked; not released."""
    req = SimReq(sim.next_rid, prompt, 100, sim.K)
    sim.next_rid += 1
    assert sim.admit(req)
    while req.state == "prefill":
        sim.prefill_step(req)
        sim.check_all()
    for _ in range(decode_steps):
        sim.decode_step(req, iterations=1)
        sim.check_all()
    return req


@pytest.mark.parametrize("page", [1, 16, 64])
def test_match_cuts_back_before_a_freed_sink(page):
    """A prefix whose sinks lost their SWA KV is reused only up to the first missing sink.

    SGLang's own rule accepts it (the window before the first new token is there); ours
    cuts it to the tombstone, and once a cold prefill of the same text rebuilt the sinks,
    the next request reuses the whole prefix again with exactly the cold KV. At page P the
    prompt is 3P + 5 tokens, so that decode frees a page past the sink page K = P.
    """
    sim = Sim(0, window=4, keep_first=3, chunk=100, page=page, cache_prompt=0.0, follow_up=0.0)
    prompt = list(range(1, 21)) if page == 1 else [1 + j % 29 for j in range(3 * page + 5)]

    a = _serve(sim, prompt, 8)
    tokens_a = a.tokens
    assert a.kv.swa_evicted_seqlen > sim.K, "the scenario needs window eviction past the sinks"
    sim.release(a, is_insert=True)
    sim.check_all()
    # Window eviction during decode left [K, frontier) tombstoned and [0, K) live.
    sink = sim.tc.root_node.children[RadixKey(tokens_a).child_key(page)]
    assert len(sink.value) == sim.K and not sink.swa_tombstone
    assert all(n.swa_tombstone for n in sink.children.values())
    # SWA pressure in SGLang's own order (nodes nearest the root first), which our cache keeps for idle
    # sinks only when nothing else is left: the state the cut-back below guards against.
    SWARadixCache.evict(sim.tc, EvictParams(swa_num_tokens=1))
    sim.check_all()
    assert sink.swa_tombstone, "the scenario needs the sink node tombstoned"

    key = RadixKey(tokens_a[:-1]).page_aligned(page)
    _, _, stock_nodes = SWARadixCache._match_prefix_helper(sim.tc, key)
    assert stock_nodes > 0, "SGLang's rule alone would reuse this prefix"
    b = _serve(sim, tokens_a, 0)  # admit() checks the hit length against the oracle: here 0
    assert b.hit == 0
    sim.release(b, is_insert=True)  # re-inserting live KV revives the tombstoned sinks
    sim.check_all()
    c = _serve(sim, tokens_a + [7, 7], 2)
    assert c.hit == len(tokens_a) // page * page  # all of it (the tree holds whole pages)
    sim.release(c, is_insert=True)
    sim.drain()


@pytest.mark.parametrize("page", [1, 16, 64])
def test_swa_pressure_frees_idle_sinks_last(page):
    """Every hit through a cached path needs its sink node [0, K); SGLang's SWA LRU frees the nodes
    nearest the root first, which would make two cached conversations unusable for the price of K
    slots each. Our cache frees the other nodes first: under pressure no idle sink is tombstoned
    while another node still holds SWA slots, the untouched conversation is still reused whole, and
    the sinks go once nothing else is left."""
    sim = Sim(0, window=4, keep_first=3, chunk=100, page=page, cache_prompt=0.0, follow_up=0.0)
    n = 20 if page == 1 else 3 * page + 5

    def run(prompt, decode_steps):
        req = _serve(sim, prompt, decode_steps)
        sim.release(req, is_insert=True)
        sim.check_all()
        return req

    run([1 + j % 29 for j in range(n)], 8)  # two conversations, A the least recently used
    b = run([31 + j % 29 for j in range(n)], 8)

    def nodes():  # (node, start position) of every node in the tree
        out, stack = [], [(c, 0) for c in sim.tc.root_node.children.values()]
        while stack:
            node, start = stack.pop()
            out.append((node, start))
            stack.extend((c, start + len(node.value)) for c in node.children.values())
        return out

    def live_sinks() -> int:
        return sum(1 for node, start in nodes() if start < sim.K and not node.swa_tombstone)

    def live_non_sink_slots() -> int:
        return sum(len(node.value) for node, start in nodes() if start >= sim.K and not node.swa_tombstone)

    assert live_non_sink_slots() > 0 and live_sinks() == 2
    freed = sim.tc.evict(EvictParams(swa_num_tokens=1)).swa_num_tokens_evicted
    sim.check_all()
    assert freed >= 1 and live_sinks() == 2, "an idle sink went first"
    c = run(b.tokens + [7, 7], 0)  # B's conversation, untouched, is reused whole (its last token has no KV)
    assert c.hit == (len(b.tokens) - 1) // page * page
    # exactly what the other nodes hold: they all go, the sinks stay
    rest = live_non_sink_slots()
    assert sim.tc.evict(EvictParams(swa_num_tokens=rest)).swa_num_tokens_evicted == rest
    sim.check_all()
    assert live_non_sink_slots() == 0 and live_sinks() == 2
    # nothing but sinks left: one more slot takes a sink
    sim.tc.evict(EvictParams(swa_num_tokens=1))
    sim.check_all()
    assert live_sinks() == 1
    sim.drain()


@pytest.mark.parametrize("locked", [False, True], ids=["idle", "locked"])
@pytest.mark.parametrize("page", [1, 16, 64])
def test_the_same_prompt_twice_revives_part_of_a_tombstone(page, locked):
    """Two requests with one prompt, both admitted before either is cached: A decodes far and is cached
    first, its window eviction leaving [K, fA) tombstoned; B frees less, to fB inside that node, so B's
    insert splits the tombstone at fB and revives [fB, ...) with its own SWA KV (SGLang's branch 2 of
    _insert_helper, with a third request C holding the full KV of the node or not). Every step is checked,
    and a later request reuses B's whole sequence with exactly the cold KV."""
    sim = Sim(1, window=4, keep_first=3, chunk=1000, page=page, cache_prompt=0.0, follow_up=0.0)
    prompt = [1 + j % 29 for j in range(25 if page == 1 else 6 * page + 5)]

    def admit(tokens):
        req = SimReq(sim.next_rid, tokens, 1000, sim.K)
        sim.next_rid += 1
        assert sim.admit(req)
        sim.check_all()
        return req

    def prefill_and_decode(req, steps):
        while req.state == "prefill":
            sim.prefill_step(req)
            sim.check_all()
        sim.decode_step(req, iterations=steps)
        sim.check_all()

    a, b = admit(prompt), admit(prompt)
    prefill_and_decode(a, 12 if page == 1 else 3 * page)
    prefill_and_decode(b, 2)
    fa, fb = a.kv.swa_evicted_seqlen, b.kv.swa_evicted_seqlen
    shared = min(len(a.tokens), len(b.tokens))
    shared = next(j for j in range(shared + 1) if j == shared or a.tokens[j] != b.tokens[j]) // page * page
    assert sim.K < fb < min(fa, shared), (sim.K, fa, fb, shared)
    sim.release(a, is_insert=True)
    sim.check_all()
    c = None
    if locked:  # C reuses A's whole sequence through the tombstone: it holds the node's full KV
        c = admit(a.tokens + [7])
        assert c.hit == a.filled // page * page
    sim.release(b, is_insert=True)
    sim.check_all()
    # Along B's path: a tombstone ending at fb, then B's revived KV from fb on.
    node, start, key, seen = sim.tc.root_node, 0, RadixKey(b.tokens).page_aligned(page), []
    while len(key) and (child := node.children.get(key.child_key(page))) is not None:
        n = child.key.match(key, page_size=page)
        seen.append((start, start + len(child.key), child.swa_tombstone, child.full_lock_ref > 0))
        node, start, key = child, start + len(child.key), key[n:]
    assert any(end == fb and tomb for _, end, tomb, _ in seen), seen
    assert any(lo == fb and not tomb for lo, _, tomb, _ in seen), seen
    assert any(lo == fb and held for lo, _, _, held in seen) == locked, seen
    if c is not None:
        prefill_and_decode(c, 2)
        sim.release(c, is_insert=True)
        sim.check_all()
    d = admit(b.tokens + [5])  # the hit is checked against the oracle and the cold KV
    assert d.hit > fb
    prefill_and_decode(d, 1)
    sim.drain()


def test_factory_and_floor_hook():
    from types import SimpleNamespace

    from sglang.srt.mem_cache.chunk_cache import SWAChunkCache

    from attention_backends.radix_cache import make_radix_cache_factory
    from swaa_sglang.serving.eviction_hooks import sink_floor_hook

    sim = Sim(0, window=4, keep_first=3, chunk=4)
    factory = make_radix_cache_factory(3)
    ctx = SimpleNamespace(is_hybrid_swa=True, disable_radix_cache=False, full_tokens_per_layer=1, params=sim.tc_params)
    cache = factory(ctx)
    assert isinstance(cache, SWAASinkRadixCache) and cache.sink_len == 3 and cache.sliding_window_size == 3
    assert isinstance(factory(SimpleNamespace(**{**vars(ctx), "disable_radix_cache": True})), SWAChunkCache)
    with pytest.raises(ValueError, match="hybrid SWA pool"):
        factory(SimpleNamespace(**{**vars(ctx), "is_hybrid_swa": False}))
    req = SimpleNamespace(swa_evict_floor=0)
    sink_floor_hook(3, 16)(req)
    assert req.swa_evict_floor == 16


def test_window_frees_are_counted_exactly_and_logged(caplog):
    """The AROUND hook body on SGLang's real free_swa_out_of_window_slots: it counts exactly the SWA
    slots window eviction frees (what the allocator gets back; never the sinks), leaves the allocator
    as it was, and logs the count at most once per interval."""
    from swaa_sglang.serving.eviction_hooks import WindowFreeCounter, count_window_frees

    W, k, L = 6, 3, 40
    sim = Sim(0, W, k, 8, full_size=100, swa_size=100)
    req = SimReq("r", list(range(L)), 8, sim.K)
    req.req_pool_idx = sim.rows.pop()
    slots = sim.alloc.alloc(L)
    sim.r2t.req_to_token[req.req_pool_idx, :L] = slots.to(torch.int32)
    req.kv = ReqKvInfo(kv_allocated_len=L, swa_evicted_seqlen=0)
    now = [0.0]
    counter = WindowFreeCounter(interval=60, clock=lambda: now[0])
    kw = dict(sliding_window_size=sglang_window(W), page_size=1, req_to_token_pool=sim.r2t,
              token_to_kv_pool_allocator=sim.alloc, is_chunk_cache=False)

    def evict(pre_len):
        before = sim.alloc.swa_available_size()
        with caplog.at_level(logging.INFO, logger="swaa_sglang"):
            count_window_frees(lambda: free_swa_out_of_window_slots(req, pre_len, **kw), sim.alloc, counter)
        return sim.alloc.swa_available_size() - before

    # query L - 1 reads [L - W, L - 1] and the sinks [0, K): [K, L - W) is freed
    assert evict(L - 1) == L - W - sim.K == counter.total
    assert "free_swa" not in vars(sim.alloc)  # the counting shadow is gone

    def logged():
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("swaa: window eviction freed")]

    assert not logged()  # within the first interval: nothing logged yet
    now[0] = 61.0
    assert evict(L - 1) == 0 and counter.total == L - W - sim.K  # nothing new to free, nothing counted
    assert logged() == [f"swaa: window eviction freed {L - W - sim.K} KV slots in the SWA pool in the last 61 s "
                        f"({L - W - sim.K} since start)"]
    for _ in range(5):  # five decode steps later, five more
        sim.r2t.req_to_token[req.req_pool_idx, L] = sim.alloc.alloc(1).to(torch.int32)[0]
        L += 1
        req.kv.kv_allocated_len = L
        assert evict(L - 1) == 1
    assert counter.total == L - W - sim.K and req.kv.swa_evicted_seqlen == L - W
