"""SWAA attention backend for SGLang 0.5.17 on FlashInfer.

Full layers, and decode on sliding layers with FA decode, run SGLang's own
FlashInfer backend unchanged (this class extends it). Sliding layers add, via
:mod:`attention_backends.flashinfer_ops`:

* extend (prefill, chunked prefill over a cached prefix, mixed batches, requests
  prefilled again after a retraction): a windowed paged pass plus an extra pass
  over the sinks outside the window, merged in place by log-sum-exp. A row at a
  position at or past its request's prompt length is a generated token: on a
  layer with FA decode it sees everything (a second plan, ``prefill_fa``, made
  only for batches that hold such rows);
* decode without FA decode: one pass over ``sinks ++ last W`` (CUDA graphs too).

Plans are built on the CPU from SGLang's ``*_cpu`` lengths, once per batch.
"""

from __future__ import annotations

import enum
import logging
import os
from typing import TYPE_CHECKING, Optional

import torch
from sglang.srt.layers.attention.flashinfer_backend import FlashInferAttnBackend, WrapperDispatch
from sglang.srt.mem_cache.memory_pool import KVWriteLoc

from swaa_sglang.config import SWAAConfig, layer_ranges

from .flashinfer_ops import HeadConfig, SlidingDecode, SlidingPrefill
from .op_check import OpCheck
from .planning import GENERATED_FROM_ATTR

if TYPE_CHECKING:
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch
    from sglang.srt.model_executor.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def generated_from(forward_batch: ForwardBatch) -> torch.Tensor:
    """Each request's prompt length ([bs] int64, CPU) for an extend batch: rows at or past it are generated.

    SGLang's ForwardBatch does not carry it; the plugin's hook on ``ForwardBatch.init_new`` reads
    it from the scheduler's requests (``len(req.origin_input_ids)``). Decode rows folded into a
    mixed batch, and the output of a retracted request prefilled again, lie past it.
    """
    marked = getattr(forward_batch, GENERATED_FROM_ATTR, None)
    if marked is None:
        raise RuntimeError(
            "swaa: an extend batch arrived without its requests' prompt lengths marked; the plugin's hook on "
            "ForwardBatch.init_new did not run (was the swaa plugin loaded through SGLang's plugin loader?)"
        )
    n_rows = len(forward_batch.extend_seq_lens_cpu)
    if marked.numel() != n_rows:
        raise RuntimeError(
            f"swaa: the batch's prompt-length marking has {marked.numel()} requests, its extend has {n_rows} "
            "(ForwardBatch.init_new's requests do not match its rows)"
        )
    return marked


class KVPool(enum.Enum):
    """Which KV buffer a layer reads, and so which slots its index lists hold."""

    FULL = "full"  # SGLang's full pool: the slots req_to_token holds
    SWA = "swa"  # the SWA pool of window eviction: slots mapped by translate_loc_from_full_to_swa


def _lens(cpu_lens, device_lens: torch.Tensor) -> torch.Tensor:
    return device_lens.cpu().long() if cpu_lens is None else torch.as_tensor(cpu_lens, dtype=torch.int64)


class SWAAFlashInferBackend(FlashInferAttnBackend):
    def __init__(self, model_runner: ModelRunner, config: SWAAConfig):
        super().__init__(model_runner, init_new_workspace=model_runner.init_new_workspace)
        # Window eviction gives the runner a window (W - 1), so SGLang plans two wrappers and full layers run
        # through its wrapper 1. On SGLang 0.5.17's ragged extend path that wrapper is planned over seq_lens
        # instead of the cached prefix and read before the new tokens' KV is written, so full layers would
        # attend to stale slots whenever an extend has a prefix; its paged path (KV first, causal) is exact.
        if self.dispatch_reason is WrapperDispatch.SLIDING_WINDOW:
            self.use_paged = True
        self.swaa = config
        num_layers = model_runner.model_config.num_hidden_layers
        self.sliding_layers = frozenset(i for i in range(num_layers) if config.is_sliding(i))
        self.windowed_decode_layers = frozenset(i for i in range(num_layers) if config.windowed_decode(i))
        upd = self.indices_updater_decode
        self.heads = HeadConfig(upd.num_qo_heads, upd.num_kv_heads, upd.head_dim, upd.q_data_type, upd.data_type)
        w, k = config.sliding_window_size, config.keep_first
        # Window eviction: layers whose KV lives in SGLang's SWA pool (hybrid_layer_pattern 1) read
        # it through SWA slots; every other layer reads the full pool with full slots.
        pool = self._swa_kv_pool  # the parent's: an SWAKVPool when the hybrid pool is on, else None
        self.swa_pool_layers = frozenset(
            i for i in range(num_layers) if pool is not None and pool.layers_mapping[i][1]
        )
        if not self.swa_pool_layers <= self.windowed_decode_layers:
            raise RuntimeError(
                f"swaa: layers {sorted(self.swa_pool_layers - self.windowed_decode_layers)} keep their KV in the SWA "
                "pool but are not windowed (full layer or FA decode): their evicted KV would be read"
            )
        self._to_swa = pool.translate_loc_from_full_to_swa if self.swa_pool_layers else None
        # SWAA_SINK_KERNEL=fused selects the Triton sink+merge kernel (attention_backends/sink_merge.py)
        sinks = os.environ.get("SWAA_SINK_KERNEL", "flashinfer")

        def prefill():
            return SlidingPrefill(self.workspace_buffer, self.heads, w, k, sinks=sinks)

        # One plan per pool the sliding layers read (prompt rule for every row).
        self.prefill = {pool_kind: prefill() for pool_kind in self._pools(self.sliding_layers)}
        # Sliding layers with FA decode, for batches that hold generated rows: those rows see
        # everything there (these layers are never in the SWA pool: full slots).
        self.fa_sliding_layers = self.sliding_layers - self.windowed_decode_layers
        self.prefill_fa = prefill() if self.fa_sliding_layers else None
        self.prefill_fa_planned = False
        self.generated_from: Optional[torch.Tensor] = None  # the current extend batch's marking
        self.eager_decode = {
            pool_kind: SlidingDecode(SlidingDecode.make_wrapper(self.workspace_buffer), self.heads, w, k)
            for pool_kind in self._pools(self.windowed_decode_layers)
        }
        self.graph_decode: dict[tuple[int, KVPool], SlidingDecode] = {}
        self.decode: dict[KVPool, SlidingDecode] = {}  # the ones planned for the current batch
        self.op_check = OpCheck.from_env(config)  # off unless SWAA_OP_CHECK_FILE is set
        logger.info(
            "SWAA backend: %s; sliding layers %d/%d, windowed decode on %d",
            config.to_json(), len(self.sliding_layers), num_layers, len(self.windowed_decode_layers),
        )
        if pool is not None:
            logger.info(
                "SWAA window eviction: KV pools: full %s tokens x %d layers, SWA %s tokens x %d layers (windowed "
                "layers %s read sinks + window through SWA slots; full-pool layers keep all KV)",
                getattr(model_runner, "full_max_total_num_tokens", None), num_layers - len(self.swa_pool_layers),
                getattr(model_runner, "swa_max_total_num_tokens", None), len(self.swa_pool_layers),
                layer_ranges(sorted(self.swa_pool_layers)),
            )

    def _pool_of(self, layer_id: int) -> KVPool:
        return KVPool.SWA if layer_id in self.swa_pool_layers else KVPool.FULL

    def _pools(self, layers) -> list[KVPool]:
        """Which pools the given layers read."""
        used = {self._pool_of(i) for i in layers}
        return [pool_kind for pool_kind in KVPool if pool_kind in used]

    def _slot_map(self, pool_kind: KVPool):
        return self._to_swa if pool_kind is KVPool.SWA else None

    # -- planning, once per batch ---------------------------------------------
    def init_forward_metadata(self, forward_batch: ForwardBatch):
        super().init_forward_metadata(forward_batch)
        mode = forward_batch.forward_mode
        self.generated_from = None
        self.prefill_fa_planned = False
        if mode.is_decode_or_idle():
            self.decode = {}
            if not mode.is_idle():
                for pool_kind, op in self.eager_decode.items():
                    self.decode[pool_kind] = self._plan_decode(op, forward_batch, forward_batch.batch_size, pool_kind)
        elif self.prefill:
            prefix = torch.as_tensor(forward_batch.extend_prefix_lens_cpu, dtype=torch.int64)
            extend = torch.as_tensor(forward_batch.extend_seq_lens_cpu, dtype=torch.int64)
            r2t, rpi = self.req_to_token_pool.req_to_token, forward_batch.req_pool_indices
            # Prompt rule for every row: right on layers without FA decode, where a generated
            # row sees sinks + window exactly like a prompt row.
            for pool_kind, op in self.prefill.items():
                op.plan(prefix, extend, r2t, rpi, slot_map=self._slot_map(pool_kind))
            if self.prefill_fa is not None:
                self.generated_from = generated_from(forward_batch)
                self.prefill_fa_planned = bool((prefix + extend > self.generated_from).any())
                if self.prefill_fa_planned:
                    self.prefill_fa.plan(prefix, extend, r2t, rpi, self.generated_from)

    def _plan_decode(self, decode: SlidingDecode, forward_batch: ForwardBatch, bs: int,
                     pool_kind: KVPool) -> SlidingDecode:
        seq_lens = _lens(forward_batch.seq_lens_cpu, forward_batch.seq_lens)[:bs]
        decode.plan(seq_lens, self.req_to_token_pool.req_to_token, forward_batch.req_pool_indices[:bs],
                    forward_batch.seq_lens[:bs], slot_map=self._slot_map(pool_kind))
        return decode

    # -- decode CUDA graphs: fixed buffers per captured batch size ---------------
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int, kv_indices_buf=None):
        super().init_cuda_graph_state(max_bs, max_num_tokens, kv_indices_buf)
        per_req = self.swaa.sliding_window_size + self.swaa.keep_first if self.windowed_decode_layers else 0
        dev = self.workspace_buffer.device
        # fixed buffers per pool kind (full / SWA slots): the two index lists differ
        self.graph_kv_indptr = {p: torch.zeros(max_bs + 1, dtype=torch.int32, device=dev) for p in self.eager_decode}
        self.graph_kv_indices = {
            p: torch.zeros(max(max_bs * per_req, 1), dtype=torch.int32, device=dev) for p in self.eager_decode
        }
        self.graph_last_page_len = {p: torch.ones(max_bs, dtype=torch.int32, device=dev) for p in self.eager_decode}

    def init_forward_metadata_out_graph(self, forward_batch: ForwardBatch, in_capture: bool = False):
        super().init_forward_metadata_out_graph(forward_batch, in_capture)
        if not (self.windowed_decode_layers and forward_batch.forward_mode.is_decode_or_idle()):
            return
        bs = forward_batch.batch_size
        self.decode = {}
        for pool_kind in self.eager_decode:
            if in_capture:
                wrapper = SlidingDecode.make_wrapper(
                    self.workspace_buffer,
                    paged_kv_indptr_buffer=self.graph_kv_indptr[pool_kind][: bs + 1],
                    paged_kv_indices_buffer=self.graph_kv_indices[pool_kind],
                    paged_kv_last_page_len_buffer=self.graph_last_page_len[pool_kind][:bs],
                )
                self.graph_decode[bs, pool_kind] = SlidingDecode(
                    wrapper, self.heads, self.swaa.sliding_window_size, self.swaa.keep_first
                )
            self.decode[pool_kind] = self._plan_decode(self.graph_decode[bs, pool_kind], forward_batch, bs, pool_kind)

    # -- execution, per layer -----------------------------------------------------
    def _save_kv(self, layer: RadixAttention, forward_batch: ForwardBatch, k, v) -> None:
        loc = KVWriteLoc(forward_batch.out_cache_loc, self.forward_metadata.swa_out_cache_loc)
        self.token_to_kv_pool.set_kv_buffer(layer, loc, k, v, *self._kv_write_scales(layer))

    def _run(self, op, q, layer: RadixAttention):
        o = op.run(
            q.contiguous().view(-1, layer.tp_q_head_num, layer.head_dim),
            self.token_to_kv_pool.get_kv_buffer(layer.layer_id),
            sm_scale=layer.scaling, logits_soft_cap=layer.logit_cap,
            k_scale=layer.k_scale_float, v_scale=layer.v_scale_float,
        )
        return o.view(-1, layer.tp_q_head_num * layer.head_dim)

    def forward_extend(self, q, k, v, layer: RadixAttention, forward_batch: ForwardBatch, save_kv_cache=True):
        if layer.layer_id not in self.sliding_layers:
            o = super().forward_extend(q, k, v, layer, forward_batch, save_kv_cache)
        else:
            if k is not None and save_kv_cache:
                self._save_kv(layer, forward_batch, k, v)
            lid = layer.layer_id
            fa_rows = self.prefill_fa_planned and lid in self.fa_sliding_layers
            o = self._run(self.prefill_fa if fa_rows else self.prefill[self._pool_of(lid)], q, layer)
        self._maybe_check("extend", layer, o, q, forward_batch)
        return o

    def forward_decode(self, q, k, v, layer: RadixAttention, forward_batch: ForwardBatch, save_kv_cache=True):
        if layer.layer_id not in self.windowed_decode_layers:
            o = super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache)
        else:
            if k is not None and save_kv_cache:
                self._save_kv(layer, forward_batch, k, v)
            o = self._run(self.decode[self._pool_of(layer.layer_id)], q, layer)
        self._maybe_check("decode", layer, o, q, forward_batch)
        return o

    def _maybe_check(self, mode: str, layer: RadixAttention, o, q, forward_batch: ForwardBatch) -> None:
        if self.op_check is not None and self.op_check.wanted(mode):
            self.op_check.check(mode, layer, o, q, self.token_to_kv_pool.get_kv_buffer(layer.layer_id),
                                self.req_to_token_pool.req_to_token, forward_batch,
                                slot_map=self._slot_map(self._pool_of(layer.layer_id)),
                                generated_from=self.generated_from)
