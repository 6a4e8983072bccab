"""Window eviction: the policy against the reference rule, and SGLang's real pool + radix cache.

Part 1 checks the pure policy of :mod:`attention_backends.eviction` by brute force
against ``swaa_sglang.reference.visibility_mask``.

Part 2 drives SGLang 0.5.17's own ``SWAKVPool``, ``SWATokenToKVPoolAllocator``,
``ReqToTokenPool`` and our ``SWAASinkRadixCache`` (an ``SWARadixCache``) on CPU
tensors through long seeded random interleavings of request arrival (match + lock),
chunked prefill (``cache_unfinished_req``), decode with SGLang's real window eviction
(``free_swa_out_of_window_slots`` with ``Req.swa_evict_floor = K``), finish (insert),
abort, retract and tree eviction, and checks after every step:

* allocator accounting for both pools (free + owned == size, nothing owned twice,
  nothing free and owned, no duplicate in a free list: a double free shows here);
* the radix tree: tombstone flags agree with the full->SWA mapping, SGLang's size
  counters agree with the tree, no node straddles the sink boundary;
* every live request still has its sinks and the window its next query reads, and
  their KV *content* is right: every KV write stores an id of the exact token prefix
  it was computed from, so a stale, freed-and-reused or wrongly shared slot is caught;
* every cache hit equals the oracle cut-back (:func:`usable_prefix_len` over the
  tree's presence) and hands back exactly the KV a cold prefill computes.

A control run with SGLang's stock ``SWARadixCache`` (no sink handling) must fail
these checks, which shows that they can fail.
"""

from __future__ import annotations

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

from attention_backends.radix_cache import SWAASinkRadixCache

SWA_LAYER, FULL_LAYER = 0, 1  # layer 0: windowed (SWA pool); layer 1: full / FA-decode (full pool)


class Violation(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Violation(msg)


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
        self.tags: list[float] = []  # content id of every prefix of tokens (Sim.tags)
        self.state = "prefill"

    @property
    def tokens(self):
        return self.origin_input_ids + self.output_ids

    def get_fill_ids(self):
        return self.tokens[: self.filled]


class Sim:
    def __init__(self, seed, window, keep_first, chunk, cache_cls=SWAASinkRadixCache,
                 full_size=160, swa_size=70, max_reqs=5, ctx=160):
        self.rng = random.Random(seed)
        self.W, self.k, self.C = window, keep_first, chunk
        self.K = sink_floor(keep_first, 1)
        self.pool = SWAKVPool(
            size=full_size, size_swa=swa_size, page_size=1, dtype=torch.float32, head_num=1, head_dim=1,
            swa_attention_layer_ids=[SWA_LAYER], full_attention_layer_ids=[FULL_LAYER], device="cpu",
        )
        self.alloc = SWATokenToKVPoolAllocator(full_size, swa_size, 1, torch.float32, "cpu", self.pool, need_sort=False)
        self.r2t = ReqToTokenPool(max_reqs, ctx, "cpu", False)
        params = CacheInitParams(
            disable=False, req_to_token_pool=self.r2t, token_to_kv_pool_allocator=self.alloc,
            page_size=1, sliding_window_size=sglang_window(window),
        )
        self.tc_params = params
        self.tc = cache_cls(params, keep_first) if cache_cls is SWAASinkRadixCache else cache_cls(params)
        self.ours = cache_cls is SWAASinkRadixCache
        self.rows = list(range(1, max_reqs + 1))
        self.live: list[SimReq] = []
        self.waiting: list[SimReq] = []
        self.ids: dict[tuple, int] = {}
        self.docs = [[self.rng.randrange(30) for _ in range(60)] for _ in range(3)]
        self.ctx = ctx
        self.next_rid = 0
        self.stats = dict(hits=0, hit_tokens=0, cut=0, retract=0, finish=0, abort=0, evict=0, decode=0)

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
        self.buf(FULL_LAYER)[full] = t
        self.buf(SWA_LAYER)[swa] = t

    def read_ok(self, req, positions, swa_layer: bool, what: str):
        """The KV at these positions, as the layer reads it, is the KV of this request's own prefix."""
        pos = torch.as_tensor(sorted(positions), dtype=torch.long)
        if pos.numel() == 0:
            return
        full = self.r2t.req_to_token[req.req_pool_idx, pos].long()
        want = torch.tensor(self.tags(req), dtype=torch.float32)[pos]
        if swa_layer:
            swa = self.alloc.full_to_swa_index_mapping[full]
            gone = pos[swa <= 0]
            check(gone.numel() == 0, f"{what}: req {req.rid}: the windowed layer reads positions {gone.tolist()}, whose SWA KV is gone")
            got = self.buf(SWA_LAYER)[swa]
        else:
            got = self.buf(FULL_LAYER)[full]
        bad = pos[got != want]
        check(bad.numel() == 0, f"{what}: req {req.rid}: positions {bad.tolist()} hold KV of another prefix ({'SWA' if swa_layer else 'full'} pool)")

    def compute(self, req, lo, hi, what):
        """Run queries at positions [lo, hi): check every cached key they read, then write their KV."""
        self.read_ok(req, _positions(needed_ranges(lo, lo, self.W, self.k)), True, what)
        self.read_ok(req, range(lo), False, what)
        self.write(req, lo, hi)

    # -- allocation under pressure ---------------------------------------------------------
    def alloc_tokens(self, n, owner):
        for attempt in range(3):
            out = self.alloc.alloc(n)
            if out is not None:
                return out
            if attempt == 0:
                self.tc.evict(EvictParams(num_tokens=n, swa_num_tokens=n))
            else:
                others = [r for r in self.live if r is not owner and r.state == "decode"]
                if not others:
                    return None
                self.retract(self.rng.choice(others))
        return None

    # -- request life cycle ---------------------------------------------------------------
    def new_request(self):
        doc = self.rng.choice(self.docs)
        n = self.rng.randrange(2, 45)
        prompt = doc[: self.rng.randrange(1, n + 1)]
        prompt += [self.rng.randrange(30) for _ in range(n - len(prompt))]
        req = SimReq(self.next_rid, prompt, self.rng.randrange(1, 25), self.K)
        self.next_rid += 1
        self.waiting.append(req)

    def oracle_match(self, key_tokens):
        """Longest exact reuse by the policy, from the tree as it is (read-only walk)."""
        node, present, bounds = self.tc.root_node, [], [0]
        key = RadixKey(key_tokens)
        while len(key) > 0:
            child = node.children.get(key.child_key(1))
            if child is None:
                break
            m = child.key.match(key, page_size=1)
            present += [not child.swa_tombstone] * m
            bounds.append(len(present))
            if m < len(child.key):
                break
            node, key = child, key[m:]
        return usable_prefix_len(present, bounds, self.W, self.k), len(present)

    def admit(self, req):
        if not self.rows or len(req.tokens) >= self.ctx:
            return False
        key = req.tokens[:-1]
        want, raw = self.oracle_match(key)
        m = self.tc.match_prefix(MatchPrefixParams(key=RadixKey(key)))
        p = len(m.device_indices)
        check(p == want, f"match: cache gives a {p}-token prefix, the policy allows exactly {want} (raw match {raw})")
        req.req_pool_idx = self.rows.pop()
        res = self.tc.inc_lock_ref(m.last_device_node)
        req.last_node, req.swa_uuid_for_lock = m.last_device_node, res.swa_uuid_for_lock
        self.r2t.req_to_token[req.req_pool_idx, :p] = m.device_indices.to(torch.int32)
        req.cache_protected_len = req.filled = p
        req.kv = ReqKvInfo(kv_allocated_len=p, swa_evicted_seqlen=0)
        # A hit must hold exactly what a cold prefill computes: check what the new tokens read.
        self.read_ok(req, _positions(needed_for_prefix(p, self.W, self.k)), True, "hit")
        self.read_ok(req, range(p), False, "hit")
        self.stats["hits"] += p > 0
        self.stats["hit_tokens"] += p
        self.stats["cut"] += p < raw
        self.live.append(req)
        return True

    def prefill_step(self, req):
        total = len(req.tokens)
        n = min(self.C, total - req.filled)
        slots = self.alloc_tokens(n, req)
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

    def decode_step(self, req):
        if len(req.tokens) >= self.ctx - 1 or len(req.output_ids) >= req.max_new:
            self.release(req, is_insert=True)
            self.stats["finish"] += 1
            return
        # ScheduleBatch.maybe_evict_swa -> _evict_swa, as alloc_for_decode does (every step).
        free_swa_out_of_window_slots(
            req, len(req.tokens) - 1, sliding_window_size=self.tc.sliding_window_size, page_size=1,
            req_to_token_pool=self.r2t, token_to_kv_pool_allocator=self.alloc, is_chunk_cache=False,
        )
        slot = self.alloc_tokens(1, req)
        if slot is None or req not in self.live:
            return
        pos = req.filled
        self.r2t.req_to_token[req.req_pool_idx, pos] = slot.to(torch.int32)[0]
        req.filled += 1
        req.kv.kv_allocated_len = req.filled
        self.compute(req, pos, pos + 1, "decode")
        req.output_ids.append(self.rng.randrange(30))
        self.stats["decode"] += 1

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
    def check_all(self):
        a, tc = self.alloc, self.tc
        mapping = a.full_to_swa_index_mapping
        full_free = torch.cat([a.full_attn_allocator.free_pages, a.full_attn_allocator.release_pages]).tolist()
        swa_free = torch.cat([a.swa_attn_allocator.free_pages, a.swa_attn_allocator.release_pages]).tolist()
        check(len(set(full_free)) == len(full_free), "full pool: a slot is in the free list twice (double free)")
        check(len(set(swa_free)) == len(swa_free), "SWA pool: a slot is in the free list twice (double free)")
        check(0 not in full_free and 0 not in swa_free, "the reserved slot 0 was freed")

        tree_owned: list[int] = []
        nodes, stack = [], list(tc.root_node.children.values())
        while stack:
            n = stack.pop()
            nodes.append(n)
            stack.extend(n.children.values())
        full_tokens = swa_tokens = full_prot = swa_prot = 0
        for n in nodes:
            vals = n.value.tolist()
            tree_owned += vals
            mapped = [int(mapping[v]) > 0 for v in vals]
            if n.swa_tombstone:
                check(not any(mapped), f"tree: tombstone node {n.id} still holds SWA KV (invisible to accounting)")
            else:
                check(all(mapped), f"tree: live node {n.id} lost SWA KV behind the tree's back")
                swa_tokens += len(vals)
                swa_prot += len(vals) if n.swa_lock_ref > 0 else 0
            full_tokens += len(vals)
            full_prot += len(vals) if n.full_lock_ref > 0 else 0
            check(n.swa_lock_ref >= 0 and n.full_lock_ref >= 0, f"tree: negative lock on node {n.id}")
            if self.ours and self.K:
                start = sum(len(x.value) for x in tc._path(n)[:-1])
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
            prefix = row[: r.cache_protected_len].tolist()
            check(all(s in tree_set for s in prefix), f"req {r.rid}: protected prefix slot not in the tree")
            req_owned += row[r.cache_protected_len : r.filled].tolist()
            # Sinks and the window its next query reads: present and with the right content.
            self.read_ok(r, _positions(needed_ranges(r.filled, r.filled, self.W, self.k)), True, "live")
            if self.ours:
                for n in tc._sink_nodes(r.last_node):
                    check(n.swa_lock_ref > 0, f"req {r.rid}: sink node {n.id} on its path is not SWA-locked")
        owned = tree_owned + req_owned
        check(len(set(owned)) == len(owned), "a full slot is owned twice (tree and request, or two requests)")
        check(not (set(owned) & set(full_free)), "a full slot is both owned and free")
        check(len(full_free) + len(owned) == a.size_full, f"full pool leak: free {len(full_free)} + owned {len(owned)} != {a.size_full}")
        check(all(int(mapping[s]) == 0 for s in full_free), "a free full slot still maps to an SWA slot")
        swa_live = [int(mapping[s]) for s in owned if int(mapping[s]) > 0]
        check(len(set(swa_live)) == len(swa_live), "two full slots map to one SWA slot")
        check(not (set(swa_live) & set(swa_free)), "an SWA slot is both in use and free")
        check(len(swa_free) + len(swa_live) == a.size_swa, f"SWA pool leak: free {len(swa_free)} + used {len(swa_live)} != {a.size_swa}")

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
            self.tc.evict(EvictParams(num_tokens=self.rng.randrange(0, 20), swa_num_tokens=self.rng.randrange(0, 30)))
            self.stats["evict"] += 1
        else:
            self.new_request()
        self.check_all()

    def drain(self):
        for r in list(self.live):
            self.release(r, is_insert=True)
            self.check_all()
        self.tc.evict(EvictParams(num_tokens=10**6, swa_num_tokens=10**6))
        self.check_all()
        check(self.tc.full_protected_size() == 0 and self.tc.swa_protected_size() == 0, "locks left after all requests ended")
        check(self.alloc.full_available_size() == self.alloc.size_full, "full pool not whole after draining")
        check(self.alloc.swa_available_size() == self.alloc.size_swa, "SWA pool not whole after draining")
        self.tc.sanity_check()  # SGLang's own LRU / size check (idle only)


CASES = [  # (window W, keep_first k, prefill chunk)
    (4, 3, 5), (6, 1, 3), (3, 5, 100), (8, 4, 7), (5, 0, 4), (2, 2, 2),
]


@pytest.mark.parametrize("window,keep_first,chunk", CASES)
def test_sink_radix_cache_random_interleavings(window, keep_first, chunk):
    total = dict.fromkeys(("hits", "decode", "finish", "abort", "retract", "evict"), 0)
    for seed in range(3):
        sim = Sim(seed * 1000 + window * 10 + keep_first, window, keep_first, chunk)
        for _ in range(700):
            sim.step()
        sim.drain()
        for name in total:
            total[name] += sim.stats[name]
    # The runs must have exercised what they claim to test.
    assert total["hits"] > 15 and total["decode"] > 150 and total["finish"] > 5, total
    assert total["abort"] > 5 and total["retract"] > 5 and total["evict"] > 50, total


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


def test_stock_swa_radix_cache_fails_the_checks_with_sinks():
    """Control: SGLang's SWARadixCache with the same floor does not keep sinks correctly."""
    failures = []
    for seed in range(4):
        sim = Sim(seed, 4, 3, 5, cache_cls=SWARadixCache, swa_size=45)
        try:
            for _ in range(600):
                sim.step()
        except Violation as e:
            failures.append(str(e))
        except AssertionError as e:  # SGLang's own asserts (e.g. locking a tombstoned node)
            failures.append(f"sglang assert: {e}")
    assert failures, "the invariant checks did not catch the stock cache losing sinks"


def test_match_cuts_back_before_a_freed_sink():
    """A prefix whose sinks lost their SWA KV is reused only up to the first missing sink.

    SGLang's own rule accepts it (the window before the first new token is there); ours
    cuts it to the tombstone, and once a cold prefill of the same text rebuilt the sinks,
    the next request reuses the whole prefix again with exactly the cold KV.
    """
    sim = Sim(0, window=4, keep_first=3, chunk=100)
    prompt = list(range(1, 21))

    def run(prompt, decode_steps):
        req = SimReq(sim.next_rid, prompt, 100, sim.K)
        sim.next_rid += 1
        assert sim.admit(req)
        while req.state == "prefill":
            sim.prefill_step(req)
            sim.check_all()
        for _ in range(decode_steps):
            sim.decode_step(req)
            sim.check_all()
        return req

    a = run(prompt, 8)
    tokens_a = a.tokens
    sim.release(a, is_insert=True)
    sim.check_all()
    # Window eviction during decode left [K, frontier) tombstoned and [0, K) live.
    sink = sim.tc.root_node.children[tokens_a[0]]
    assert len(sink.value) == sim.K and not sink.swa_tombstone
    # SWA pressure with nothing running: SGLang evicts nodes nearest the root first.
    sim.tc.evict(EvictParams(swa_num_tokens=1))
    sim.check_all()
    assert sink.swa_tombstone, "the scenario needs the sink node tombstoned"

    key = RadixKey(tokens_a[:-1])
    _, _, stock_nodes = SWARadixCache._match_prefix_helper(sim.tc, key)
    assert stock_nodes > 0, "SGLang's rule alone would reuse this prefix"
    b = run(tokens_a, 0)  # admit() checks the hit length against the oracle: here 0
    assert b.cache_protected_len == 0
    sim.release(b, is_insert=True)  # re-inserting live KV revives the tombstoned sinks
    sim.check_all()
    c = run(tokens_a + [7, 7], 2)
    assert c.cache_protected_len == len(tokens_a)
    sim.release(c, is_insert=True)
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
