"""Prefix-cache hits with window eviction, through SGLang 0.5.17's scheduler loop on CPU.

The GPU mixed-layout test's 15 requests (tests/test_gpu_eviction.py: three shared documents, then
prefixes of them with new tails), one at a time, through ``tests/scheduler_replay.py`` (SGLang's
real pool, allocator, PrefillAdder and our cache; W = 64, k = 4, chunk 256) at page sizes 1 and 16.
Each case runs in a subprocess: the replay patches SGLang globals. Pools are given in tokens: the
full pool as the GPU engine's mixed layout had it (about 747K), the SWA pool per case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CASE = r'''
import json, sys
sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
from array import array
import scheduler_replay as R
from sglang.srt.managers.schedule_batch import Req
from sglang.srt.sampling.sampling_params import SamplingParams
from test_gpu_eviction import _requests

page, swa, evict, stock_order = {page}, {swa}, {evict}, {stock_order}
if stock_order:  # the control: SGLang's own SWA eviction order (sinks first)
    from sglang.srt.mem_cache.swa_radix_cache import SWARadixCache
    from attention_backends.radix_cache import SWAASinkRadixCache
    SWAASinkRadixCache.evict = SWARadixCache.evict
a = R.parse_args(["--page", str(page)])
a.L, a.wm1, a.k, a.chunk, a.max_prefill, a.max_new = 1600, 63, 4, 256, 16384, 300
a.full, a.swa = 747000 // page * page, swa // page * page
a.interval, a.max_reqs = (128 if evict else 10**9), 32  # eviction off: SGLang never frees a window
sim = R.setup(a)
if not evict:
    sim.floor = 0
first, launch = {{}}, sim.launch_extend
def launch_recording(reqs):  # the prefix each request reuses, when it is first prefilled
    for r in reqs:
        first.setdefault(r.rid, len(r.prefix_indices))
    return launch(reqs)
sim.launch_extend = launch_recording
tree = sim.tree
def idle_sink_freed_before_the_rest():
    sinks, rest, stack = [], [], [(c, 0) for c in tree.root_node.children.values()]
    while stack:
        node, start = stack.pop()
        (sinks if start < tree.sink_len else rest).append(node)
        stack.extend((c, start + len(node.value)) for c in node.children.values())
    return any(n.swa_tombstone for n in sinks) and any(not n.swa_tombstone and n.swa_lock_ref == 0 for n in rest)
hits, sinks_first = [], 0
round1, round2 = _requests()
for i, (prompt, new) in enumerate(round1 + round2):
    r = Req(f"r{{i}}", "", array("q", prompt), SamplingParams(max_new_tokens=new, ignore_eos=True, temperature=0),
            vocab_size=10**9)
    r.swa_evict_floor = sim.floor
    sim.nid += 1
    sim.waiting.append(r)
    while sim.busy():
        sim.step()
    hits.append(first[r.rid])
    sinks_first += idle_sink_freed_before_the_rest()
print("RESULT " + json.dumps(dict(hits=hits, sinks_first=sinks_first, whole=sim.pools_after_flush()["pools_whole"])))
'''


def replay(page: int, swa: int, evict: bool, stock_order: bool = False) -> dict:
    code = CASE.format(tests=str(ROOT / "tests"), root=str(ROOT), page=page, swa=swa, evict=evict,
                       stock_order=stock_order)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, r.stderr[-3000:]
    return json.loads(line[-1][len("RESULT "):])


@pytest.mark.parametrize("page", [1, 16])
def test_eviction_loses_no_hit_when_the_swa_pool_holds_the_prefixes(page):
    """With an SWA pool that holds the cached prefixes' windows and sinks, every request reuses what it
    reuses with eviction off: the window frontier, tombstones, page alignment and the sink cut-back
    lose nothing a request could use."""
    on, off = replay(page, 85000, True), replay(page, 800000, False)
    assert any(h > 4 for h in on["hits"]), "the workload must reuse prefixes"
    assert on["hits"] == off["hits"] and on["whole"] and off["whole"]


@pytest.mark.parametrize("page", [1, 16])
def test_a_small_swa_pool_frees_idle_sinks_last(page):
    """With 2,500 SWA slots for about 5,500 of cached prefixes, SGLang's LRU must evict: after every
    request no idle sink is tombstoned while a non-sink node still holds SWA slots, the pools are
    whole at the end, and more is reused than in SGLang's own order (the control, which frees
    sinks first), though less than with eviction off."""
    ours, stock, off = replay(page, 2500, True), replay(page, 2500, True, stock_order=True), replay(page, 800000, False)
    assert stock["sinks_first"] > 0, "the control must free sinks first, or the pool is not under pressure"
    assert ours["sinks_first"] == 0 and ours["whole"], ours
    assert sum(stock["hits"]) < sum(ours["hits"]) < sum(off["hits"]), (stock["hits"], ours["hits"], off["hits"])
