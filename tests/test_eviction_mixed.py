"""Window eviction with a MIXED layout: full-attention layers beside windowed layers.

Under window eviction the model runner has ``sliding_window_size = W - 1`` (the hybrid-pool
override), so SGLang's FlashInfer backend plans TWO wrappers (``WrapperDispatch.SLIDING_WINDOW``) and
our full layers (``RadixAttention.sliding_window_size == -1``) run through wrapper 1, SGLang's
"full attention" wrapper, via ``SWAAFlashInferBackend.forward_extend -> super()``. In an all-windowed
layout no layer takes that path, so tests/test_eviction.py cannot see a fault there.

Part 1 (pool / allocator / radix cache): the random scheduler simulation of tests/test_eviction.py
(SGLang's real ``SWAKVPool``, ``SWATokenToKVPoolAllocator``, ``free_swa_out_of_window_slots`` and our
``SWAASinkRadixCache``) over a pool with a 24-layer mixed layout (12 full-pool
layers, 12 SWA-pool layers): every full-pool layer must read all positions of the request with the
right KV, every SWA-pool layer its sinks + window.

Part 2 (attention backend): SGLang's real ``FlashInferAttnBackend.init_forward_metadata`` /
``forward_extend`` / ``FlashInferIndicesUpdaterPrefill`` and our real ``SWAAFlashInferBackend.__init__``,
``init_forward_metadata`` and ``forward_extend`` / ``SlidingPrefill``, on the real hybrid pool and
radix cache, with FlashInfer's wrappers replaced by CPU reference implementations of what they
compute for a plan (paged / ragged prefill, causal bottom-right aligned, ``window_left``, LSE merge).
Only ``FlashInferAttnBackend.__init__`` (GPU buffers and FlashInfer objects) is replaced, by a
stand-in that sets the attributes these paths read, as it sets them for a runner with a window.
A request that reuses a cached prefix is prefilled beside a cold one; for every layer the output
must equal the SWAA reference (``swaa_sglang.visibility_mask``) over the request's true KV, and
every KV slot the layer's passes read must hold, when read, the KV of that position of that request.
"""

from __future__ import annotations

import types

import pytest
import torch

import sglang.srt.layers.attention.flashinfer_backend as fb
from sglang.srt.environ import envs
from sglang.srt.layers.attention.flashinfer_backend import (
    FlashInferAttnBackend,
    FlashInferIndicesUpdaterDecode,
    FlashInferIndicesUpdaterPrefill,
    WrapperDispatch,
)
from sglang.srt.layers.radix_attention import AttentionType
from sglang.srt.managers.schedule_batch import ReqKvInfo
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixKey
from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
from sglang.srt.model_executor.forward_batch_info import ForwardMode

import attention_backends.flashinfer_ops as ops
import cpu_paged_kernels
import test_eviction as te
from attention_backends.backend import SWAAFlashInferBackend
from attention_backends.planning import GENERATED_FROM_ATTR
from attention_backends.radix_cache import SWAASinkRadixCache
from swaa_sglang import SWAAConfig, visibility_mask
from swaa_sglang.serving.server_args import hybrid_layer_pattern

# A 24-layer mixed layout (Qwen2.5-Coder-0.5B with the calibrator's 12 full layers).
QWEN_NON_SLIDING = [3, 5, 9, 10, 11, 13, 15, 16, 20, 21, 22, 23]


# == part 1: pool, allocator and radix cache with many full and SWA layers ==================
@pytest.mark.parametrize("page,window,keep_first,chunk", [(1, 8, 3, 7), (1, 5, 1, 16), (16, 8, 5, 40)])
def test_mixed_layout_pool_and_cache_keep_full_layer_kv(page, window, keep_first, chunk):
    config = SWAAConfig(sliding_window_size=2048, keep_first=100, non_sliding_layers=QWEN_NON_SLIDING,
                        evict_window=True)
    pattern = hybrid_layer_pattern(config, 24)
    assert pattern == [1, 1, 1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    with cpu_paged_kernels.patched():
        stats = [te._run(te.Sim(page * 7919 + seed, window, keep_first, chunk, page=page, pattern=pattern), 500)
                 for seed in range(2)]
    total = te._total(stats)
    assert total["hits"] > 5 and total["decode"] > 50 and total["window_freed"] > 0, total
    assert total["tree_swa_evicted"] > 0 and total["retract"] > 0, total


# == part 2: the attention backend, full layers through SGLang's stock FlashInfer path ============
HQ, HK, D = 4, 2, 8


def _attend(q, K, V, causal, window_left, sm_scale):
    """FlashInfer's prefill semantics for one request: query t of n sits at kv position t + m - n."""
    n, m = q.shape[0], K.shape[0]
    g = HQ // HK
    Kx, Vx = K.double().repeat_interleave(g, 1), V.double().repeat_interleave(g, 1)
    s = torch.einsum("thd,mhd->thm", q.double(), Kx) * sm_scale
    qpos = torch.arange(n)[:, None] + (m - n)
    kpos = torch.arange(m)[None, :]
    vis = torch.ones(n, m, dtype=torch.bool)
    if causal:
        vis &= kpos <= qpos
    if window_left is not None and window_left >= 0:
        vis &= kpos >= qpos - window_left
    s = s.masked_fill(~vis[:, None, :], float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.nan_to_num(torch.exp(s - lse[..., None]), nan=0.0)
    return torch.einsum("thm,mhd->thd", p, Vx).float(), lse.float()


def _merge(o1, s1, o2, s2):
    m = torch.maximum(s1, s2)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    w1, w2 = torch.exp(s1 - m), torch.exp(s2 - m)
    tot = w1 + w2
    o = (o1 * w1[..., None] + o2 * w2[..., None]) / tot.clamp_min(1e-30)[..., None]
    return o, m + torch.log(tot)


def _merge_in_place(v, s, v_other, s_other, mask=None):
    o, lse = _merge(v, s, v_other, s_other)
    rows = torch.ones(v.shape[0], dtype=torch.bool) if mask is None else mask.bool()
    v[rows], s[rows] = o[rows].to(v.dtype), lse[rows]


class Reads:
    """Every (request, KV buffer, slots, keys as read) of the current layer, from every fake wrapper."""

    log: list = []


class FakePaged:
    """``BatchPrefillWithPagedKVCacheWrapper`` (page size 1) on the CPU: what the kernel computes for its plan."""

    def __init__(self, *args, **kwargs):
        self.causal, self.window_left = False, -1

    def plan(self, qo_indptr, kv_indptr, kv_indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
             page_size, causal=False, window_left=-1, **kwargs):
        assert page_size == 1
        self.qo, self.kvp = qo_indptr.long().clone(), kv_indptr.long().clone()
        self.kvi = kv_indices[: int(kv_indptr[-1])].long().clone()
        self.causal, self.window_left = causal, window_left

    begin_forward = plan

    def forward_return_lse(self, q, kv_cache, causal=None, window_left=None, sm_scale=None, **kwargs):
        causal = self.causal if causal is None else causal
        window_left = self.window_left if window_left is None else window_left
        kb, vb = kv_cache
        o, lse = torch.zeros(q.shape), torch.full(q.shape[:2], float("-inf"))
        for b in range(self.qo.numel() - 1):
            rows = slice(int(self.qo[b]), int(self.qo[b + 1]))
            slots = self.kvi[int(self.kvp[b]) : int(self.kvp[b + 1])]
            if rows.stop == rows.start:
                continue
            Reads.log.append((b, kb.data_ptr(), slots.clone(), kb[slots].clone()))
            o[rows], lse[rows] = _attend(q[rows], kb[slots], vb[slots], causal, window_left, sm_scale)
        return o, lse

    def forward(self, q, kv_cache, **kwargs):
        return self.forward_return_lse(q, kv_cache, **kwargs)[0]


class FakeRagged:
    """``BatchPrefillWithRaggedKVCacheWrapper`` on the CPU (keys: the extend tokens' own k, v)."""

    def __init__(self, *args, **kwargs):
        pass

    def begin_forward(self, qo_indptr, kv_indptr, *args, **kwargs):
        self.qo, self.kvp = qo_indptr.long().clone(), kv_indptr.long().clone()

    def forward_return_lse(self, q, k, v, causal=True, sm_scale=None, window_left=-1, **kwargs):
        o, lse = torch.zeros(q.shape), torch.full(q.shape[:2], float("-inf"))
        for b in range(self.qo.numel() - 1):
            rows = slice(int(self.qo[b]), int(self.qo[b + 1]))
            keys = slice(int(self.kvp[b]), int(self.kvp[b + 1]))
            if rows.stop > rows.start:
                o[rows], lse[rows] = _attend(q[rows], k[keys], v[keys], causal, window_left, sm_scale)
        return o, lse

    def forward(self, q, k, v, **kwargs):
        return self.forward_return_lse(q, k, v, **kwargs)[0]


class FakeDecode:
    def __init__(self, workspace, *args, **kwargs):
        self._float_workspace_buffer = workspace


def _kv_indices_cpu(req_to_token, req_pool_indices, lens, kv_indptr, kv_start_idx, kv_indices, stride):
    for b in range(lens.numel()):
        n, o = int(lens[b]), int(kv_indptr[b])
        s = 0 if kv_start_idx is None else int(kv_start_idx[b])
        kv_indices[o : o + n] = req_to_token[int(req_pool_indices[b]), s : s + n]


def _stock_init(self, model_runner, skip_prefill=False, kv_indptr_buf=None, kv_last_page_len_buf=None,
                init_new_workspace=False):
    """What SGLang 0.5.17's ``FlashInferAttnBackend.__init__`` sets that extend planning and execution read,
    for a runner as window eviction configures it (no multimodal, no MIS, not deterministic, bf16/fp32 KV)."""
    self.req_to_token_pool = model_runner.req_to_token_pool
    self.token_to_kv_pool = model_runner.token_to_kv_pool
    self._swa_kv_pool = FlashInferAttnBackend._resolve_swa_kv_pool(model_runner)
    self.use_sliding_window_kv_pool = self._swa_kv_pool is not None
    self.enable_mis = False
    self.is_dllm_model = False
    self.kv_cache_quant_method = self.token_to_kv_pool.get_kv_cache_quant_method()
    self.prefill_kv_access = self.decode_kv_access = None
    self.prefill_uses_dequant_workspace = self.decode_uses_dequant_workspace = False
    self.dq_page_table = self.dq_paged_kernel_lens = self.cpu_req_pool_indices = None
    self.flashinfer_kv_cache_dtype = torch.float32
    self.max_context_len = model_runner.model_config.context_len
    self.page_size = model_runner.page_size
    self.skip_prefill = skip_prefill
    self.is_multimodal = False
    if model_runner.sliding_window_size is not None:
        self.num_wrappers, self.dispatch_reason = 2, WrapperDispatch.SLIDING_WINDOW
    else:
        self.num_wrappers, self.dispatch_reason = 1, None
    self.enable_deterministic = False
    self.prefill_split_tile_size = self.decode_split_tile_size = None
    self.disable_cuda_graph_kv_split = False
    self.use_paged = envs.SGLANG_FLASHINFER_USE_PAGED.get()
    self.workspace_buffer = torch.empty(16, dtype=torch.uint8)
    max_bs = 8
    self.kv_indptr = [torch.zeros(max_bs + 1, dtype=torch.int32) for _ in range(self.num_wrappers)]
    self.kv_last_page_len = torch.ones(max_bs, dtype=torch.int32)
    self.qo_indptr = [torch.zeros(max_bs + 1, dtype=torch.int32) for _ in range(self.num_wrappers)]
    self.prefill_wrapper_ragged = fb.BatchPrefillWithRaggedKVCacheWrapper(self.workspace_buffer, "NHD")
    self.prefill_wrappers_paged = [fb.BatchPrefillWithPagedKVCacheWrapper(self.workspace_buffer, "NHD")
                                   for _ in range(self.num_wrappers)]
    self.prefill_wrappers_verify = []
    self.decode_wrappers = [FakeDecode(self.workspace_buffer) for _ in range(self.num_wrappers)]
    self.indices_updater_prefill = FlashInferIndicesUpdaterPrefill(model_runner, self)
    self.indices_updater_decode = FlashInferIndicesUpdaterDecode(model_runner, self)
    self.forward_metadata = None
    self.decode_cuda_graph_metadata, self.prefill_cuda_graph_metadata = {}, {}
    self.draft_extend_cuda_graph_metadata, self.full_cg_prefill_wrappers = {}, None


@pytest.fixture
def cpu_flashinfer(monkeypatch):
    monkeypatch.setattr(fb, "BatchPrefillWithPagedKVCacheWrapper", FakePaged, raising=False)
    monkeypatch.setattr(fb, "BatchPrefillWithRaggedKVCacheWrapper", FakeRagged, raising=False)
    monkeypatch.setattr(fb, "BatchDecodeWithPagedKVCacheWrapper", FakeDecode, raising=False)
    monkeypatch.setattr(fb, "_safe_merge_state", _merge, raising=False)
    monkeypatch.setattr(fb, "create_flashinfer_kv_indices_triton", {(b,): _kv_indices_cpu for b in range(1, 9)},
                        raising=False)
    monkeypatch.setattr(fb, "get_parallel", lambda: types.SimpleNamespace(attn_tp_size=1))
    monkeypatch.setattr(FlashInferAttnBackend, "__init__", _stock_init)
    monkeypatch.setattr(ops, "BatchPrefillWithPagedKVCacheWrapper", FakePaged)
    monkeypatch.setattr(ops, "BatchDecodeWithPagedKVCacheWrapper", FakeDecode)
    monkeypatch.setattr(ops, "merge_state_in_place", _merge_in_place)
    monkeypatch.setattr(ops, "merge_state", _merge)
    monkeypatch.delenv("SWAA_OP_CHECK_FILE", raising=False)
    monkeypatch.delenv("SWAA_SINK_KERNEL", raising=False)


class MixedServer:
    """Hybrid pool + SWAA radix cache + the SWAA backend for a small mixed model; KV content is exact."""

    W, K_SINK, LAYERS = 8, 3, 6
    NON_SLIDING = [1, 4]  # layers 1 and 4 full, the rest windowed

    def __init__(self, full_size=256, swa_size=128, max_reqs=6, ctx=128):
        self.config = SWAAConfig(sliding_window_size=self.W, keep_first=self.K_SINK,
                                 non_sliding_layers=self.NON_SLIDING, evict_window=True)
        pattern = hybrid_layer_pattern(self.config, self.LAYERS)
        assert pattern == [1, 0, 1, 1, 0, 1]
        self.pool = SWAKVPool(
            size=full_size, size_swa=swa_size, page_size=1, dtype=torch.float32, head_num=HK, head_dim=D,
            swa_attention_layer_ids=[i for i, p in enumerate(pattern) if p],
            full_attention_layer_ids=[i for i, p in enumerate(pattern) if not p], device="cpu",
        )
        self.alloc = SWATokenToKVPoolAllocator(full_size, swa_size, 1, torch.float32, "cpu", self.pool, need_sort=False)
        self.r2t = ReqToTokenPool(max_reqs, ctx, "cpu", False)
        gen = torch.Generator().manual_seed(1)
        for layer in range(self.LAYERS):  # stale KV of earlier requests in every slot
            for buf in self.pool.get_kv_buffer(layer):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 3)
        params = CacheInitParams(disable=False, req_to_token_pool=self.r2t, token_to_kv_pool_allocator=self.alloc,
                                 page_size=1, sliding_window_size=self.config.sglang_window)
        self.tc = SWAASinkRadixCache(params, self.K_SINK)
        model_config = types.SimpleNamespace(
            num_hidden_layers=self.LAYERS, context_len=ctx, head_dim=D,
            get_max_num_attention_heads=lambda: HQ, get_num_kv_heads=lambda tp: HK,
        )
        runner = types.SimpleNamespace(
            req_to_token_pool=self.r2t, token_to_kv_pool=self.pool, token_to_kv_pool_allocator=self.alloc,
            model_config=model_config, page_size=1, dtype=torch.float32, init_new_workspace=False,
            # set by resolve_sliding_window_size from the hybrid override (eviction_hooks._eviction_model_config)
            sliding_window_size=self.config.sglang_window, is_draft_worker=False,
        )
        self.backend = SWAAFlashInferBackend(runner, self.config)
        assert self.backend.swa_pool_layers == frozenset({0, 2, 3, 5})
        self.rows = list(range(1, max_reqs + 1))
        self.ids: dict = {}

    # -- the true KV: a function of the layer and the exact token prefix ----------------
    def tags(self, tokens):
        out, parent = [], 0
        for t in tokens:
            parent = self.ids.setdefault((parent, t), len(self.ids) + 1)
            out.append(parent)
        return out

    def true_kv(self, tokens, layer):
        ks, vs = [], []
        for tag in self.tags(tokens):
            g = torch.Generator().manual_seed(tag * 131 + layer)
            ks.append(torch.randn(HK, D, generator=g))
            vs.append(torch.randn(HK, D, generator=g))
        return torch.stack(ks), torch.stack(vs)

    def layer(self, layer_id):
        return types.SimpleNamespace(
            layer_id=layer_id, is_cross_attention=False, attn_type=AttentionType.DECODER, logit_cap=0.0,
            tp_q_head_num=HQ, tp_k_head_num=HK, tp_v_head_num=HK, head_dim=D, scaling=D ** -0.5,
            sliding_window_size=-1, k_scale=None, v_scale=None, k_scale_float=None, v_scale_float=None,
        )

    # -- requests ----------------------------------------------------------------------------
    def admit(self, rid, tokens):
        req = te.SimReq(rid, tokens, 1, self.tc.sink_len)
        m = self.tc.match_prefix(MatchPrefixParams(key=RadixKey(tokens[:-1])))
        p = len(m.device_indices)
        req.req_pool_idx = self.rows.pop()
        res = self.tc.inc_lock_ref(m.last_device_node)
        req.last_node, req.swa_uuid_for_lock = m.last_device_node, res.swa_uuid_for_lock
        self.r2t.req_to_token[req.req_pool_idx, :p] = m.device_indices.to(torch.int32)
        req.cache_protected_len = req.hit = p
        req.kv = ReqKvInfo(kv_allocated_len=p, swa_evicted_seqlen=0)
        return req

    def finish(self, req, n):
        req.filled = n
        self.tc.cache_finished_req(req, is_insert=True, kv_len_to_handle=n)
        self.r2t.req_to_token[req.req_pool_idx].zero_()
        self.rows.append(req.req_pool_idx)

    def extend(self, batch):
        """Prefill ``[(req, lo, hi)]`` in one extend batch through the backend, layer by layer; check each layer."""
        locs = []
        for req, lo, hi in batch:
            out = self.alloc.alloc(hi - lo)
            assert out is not None
            self.r2t.req_to_token[req.req_pool_idx, lo:hi] = out.to(torch.int32)
            req.kv.kv_allocated_len = hi
            locs.append(out)
        prefix = [lo for _, lo, _ in batch]
        seq = [hi for _, _, hi in batch]
        fwd = types.SimpleNamespace(
            forward_mode=ForwardMode.EXTEND, batch_size=len(batch),
            out_cache_loc=torch.cat(locs).long(),
            req_pool_indices=torch.tensor([r.req_pool_idx for r, _, _ in batch]),
            seq_lens=torch.tensor(seq), seq_lens_cpu=torch.tensor(seq), seq_lens_sum=sum(seq),
            extend_prefix_lens=torch.tensor(prefix), extend_prefix_lens_cpu=prefix,
            extend_seq_lens=torch.tensor(seq) - torch.tensor(prefix),
            extend_seq_lens_cpu=[h - l for l, h in zip(prefix, seq)],
            encoder_lens=None, cross_attention_custom_mask=None, spec_info=None,
        )
        setattr(fwd, GENERATED_FROM_ATTR, torch.tensor([len(r.origin_input_ids) for r, _, _ in batch]))
        self.backend.init_forward_metadata(fwd)
        gen = torch.Generator().manual_seed(sum(seq))
        for layer_id in range(self.LAYERS):
            layer = self.layer(layer_id)
            q = torch.randn(sum(h - l for l, h in zip(prefix, seq)), HQ, D, generator=gen)
            k = torch.cat([self.true_kv(r.origin_input_ids[:hi], layer_id)[0][lo:] for r, lo, hi in batch])
            v = torch.cat([self.true_kv(r.origin_input_ids[:hi], layer_id)[1][lo:] for r, lo, hi in batch])
            Reads.log = []
            o = self.backend.forward_extend(q.reshape(len(q), -1), k, v, layer, fwd).view(-1, HQ, D)
            self.check_reads(batch, layer_id)
            row = 0
            for req, lo, hi in batch:
                K, V = self.true_kv(req.origin_input_ids[:hi], layer_id)
                vis = visibility_mask(self.config, layer_id, torch.arange(lo, hi), torch.arange(hi))
                want, _ = _attend_masked(q[row : row + hi - lo], K, V, vis, layer.scaling)
                got = o[row : row + hi - lo]
                err = (got - want).abs().max().item()
                kind = "full" if layer_id in self.NON_SLIDING else "windowed"
                assert err < 1e-4, (f"{kind} layer {layer_id}, req {req.rid} (cached prefix {lo}, positions "
                                    f"[{lo}, {hi})): output differs from the SWAA reference by {err:.3g}")
                row += hi - lo

    def check_reads(self, batch, layer_id):
        """Every slot read in this layer holds, when read, the KV of that position of a request of the batch
        (whatever the pass's segments are: SGLang's are requests, ours may split them)."""
        kb = self.pool.get_kv_buffer(layer_id)[0]
        swa_layer = layer_id in self.backend.swa_pool_layers
        pool = "SWA" if swa_layer else "full"
        kind = "full" if layer_id in self.NON_SLIDING else "windowed"
        owners = []
        for req, lo, hi in batch:
            full = self.r2t.req_to_token[req.req_pool_idx, :hi].long()
            row_slots = self.alloc.full_to_swa_index_mapping[full] if swa_layer else full
            owners.append((req, lo, hi, row_slots, self.true_kv(req.origin_input_ids[:hi], layer_id)[0]))
        for _, ptr, slots, keys in Reads.log:
            assert ptr == kb.data_ptr(), f"layer {layer_id} read another layer's buffer"
            for slot, key in zip(slots.tolist(), keys):
                found = [(req, lo, hi, int(hits[0]), K) for req, lo, hi, row_slots, K in owners
                         if slot > 0 and len(hits := (row_slots == slot).nonzero().flatten())]
                assert found, f"{kind} layer {layer_id}: reads {pool} slot {slot}, which holds no position of the batch"
                req, lo, hi, pos, K = found[0]
                assert torch.equal(key, K[pos]), (
                    f"{kind} layer {layer_id}, req {req.rid} (cached prefix {lo}, extend [{lo}, {hi})): reads position "
                    f"{pos} ({pool} slot {slot}) before that slot holds the position's KV")


def _attend_masked(q, K, V, vis, sm_scale):
    g = HQ // HK
    Kx, Vx = K.double().repeat_interleave(g, 1), V.double().repeat_interleave(g, 1)
    s = torch.einsum("thd,mhd->thm", q.double(), Kx) * sm_scale
    s = s.masked_fill(~vis[:, None, :], float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.einsum("thm,mhd->thd", torch.exp(s - lse[..., None]), Vx).float(), lse


def _scenario(server):
    """A cold request A is prefilled and cached; B reuses A's first 20 tokens, prefilled beside a cold C."""
    a_tokens = [(7 * i + 3) % 29 for i in range(30)]
    a = server.admit(0, a_tokens)
    assert a.hit == 0
    server.extend([(a, 0, 30)])
    server.finish(a, 30)
    b = server.admit(1, a_tokens[:20] + [(5 * i + 1) % 23 for i in range(12)])
    assert b.hit == 20, f"B should reuse A's first 20 tokens; the cache gave {b.hit}"
    c = server.admit(2, [(11 * i + 2) % 31 for i in range(18)])
    assert c.hit == 0
    server.extend([(b, 20, 32), (c, 0, 18)])
    server.finish(b, 32)
    server.finish(c, 18)


def test_mixed_layout_backend_extend_over_a_cached_prefix(cpu_flashinfer):
    """Full layers (SGLang's stock wrapper 1) and windowed layers (ours) over a radix-cache hit, as served.

    On the stock backend's ragged path (two wrappers, because the runner has a window),
    ``FlashInferIndicesUpdaterPrefill.update_sliding_window`` plans the full-attention paged wrapper over
    ``seq_lens`` instead of ``prefix_lens``, so the paged pass would read, non-causally, the slots of the
    extend tokens before ``forward_extend`` writes their KV; the backend takes the paged path instead.
    """
    _scenario(MixedServer())


def test_the_backend_takes_the_paged_extend_path_when_the_runner_has_a_window(cpu_flashinfer):
    """The backend's own switch (``use_paged`` under two-wrapper dispatch), not the environment, makes the
    test above pass: without it the same scenario reads stale slots."""
    server = MixedServer()
    assert server.backend.dispatch_reason is WrapperDispatch.SLIDING_WINDOW and server.backend.use_paged
    server.backend.use_paged = False
    with pytest.raises(AssertionError, match=r"full layer 1, .* before that slot holds the position's KV"):
        _scenario(server)


def test_cold_batches_alone_do_not_show_it(cpu_flashinfer):
    """Without any cached prefix in the batch the stock backend runs ragged only (``extend_no_prefix``): correct.
"""
    server = MixedServer()
    r = server.admit(0, [(3 * i + 1) % 17 for i in range(25)])
    server.extend([(r, 0, 25)])
