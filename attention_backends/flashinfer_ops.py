"""Thin FlashInfer execution for sliding layers: plan once per batch, run per layer.

No SGLang here: the backend feeds these from a ForwardBatch, the GPU tests from a
synthetic KV pool, so both exercise exactly the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from flashinfer import BatchDecodeWithPagedKVCacheWrapper, BatchPrefillWithPagedKVCacheWrapper
from flashinfer.cascade import merge_state, merge_state_in_place

from .planning import Segments, decode_ranges, kv_slots, plan_extra, plan_generated, plan_window
from .sink_merge import row_blocks, sink_limits, sink_merge


@dataclass(frozen=True)
class HeadConfig:
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    q_dtype: torch.dtype
    kv_dtype: torch.dtype


class _Ones:
    """Last-page lengths: always 1 (a page-size-1 view of the pool)."""

    def __init__(self, device: torch.device):
        self.buf = torch.ones(4096, dtype=torch.int32, device=device)

    def __call__(self, n: int) -> torch.Tensor:
        if self.buf.numel() < n:
            self.buf = torch.ones(2 * n, dtype=torch.int32, device=self.buf.device)
        return self.buf[:n]


SlotMap = Callable[[torch.Tensor], torch.Tensor]


def map_slots(slots: torch.Tensor, slot_map: Optional[SlotMap]) -> torch.Tensor:
    """Full-pool slots -> the slots of the buffer a layer reads (int32, FlashInfer's index dtype).

    ``slot_map`` is None for layers whose KV lives in the full pool; for windowed layers under
    window eviction it is the SWA pool's ``translate_loc_from_full_to_swa``. The one place where
    index lists change pools.
    """
    return slots if slot_map is None else slot_map(slots).to(torch.int32)


def slots_on_device(seg: Segments, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                    slot_map: Optional[SlotMap] = None) -> torch.Tensor:
    """A plan built on the CPU -> KV pool slots on the pool's device (one gather, then ``slot_map``)."""
    dev = req_to_token.device
    on_device = Segments(
        seg.qo_indptr, seg.kv_indptr, seg.kv_req.to(dev, non_blocking=True), seg.kv_pos.to(dev, non_blocking=True)
    )
    return map_slots(kv_slots(on_device, req_to_token, req_pool_indices), slot_map)


def copy_ranges(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, lens: torch.Tensor,
                offsets: torch.Tensor, starts: Optional[torch.Tensor], out: torch.Tensor) -> None:
    """``out[offsets[b] : offsets[b] + lens[b]] = req_to_token[req_pool_indices[b], starts[b] : starts[b] + lens[b]]``.

    On CUDA: SGLang's ``create_flashinfer_kv_indices_triton`` (the kernel its own FlashInfer
    backend builds index lists with; ``starts=None`` means 0). Elsewhere: the same contract in torch.
    """
    if out.device.type == "cuda":
        from sglang.kernels.ops.kvcache.kv_indices import create_flashinfer_kv_indices_triton

        create_flashinfer_kv_indices_triton[(lens.numel(),)](
            req_to_token, req_pool_indices, lens, offsets, starts, out, req_to_token.shape[1]
        )
        return
    for b in range(lens.numel()):
        n, o = int(lens[b]), int(offsets[b])
        s = 0 if starts is None else int(starts[b])
        out[o : o + n] = req_to_token[int(req_pool_indices[b]), s : s + n]


SINK_IMPLS = ("flashinfer", "fused")


class SlidingPrefill:
    """Window pass (``window_left = W - 1``) + the keys outside it, merged in place.

    ``sinks="flashinfer"``: the outside keys are a second FlashInfer pass, merged by
    ``merge_state_in_place``. ``sinks="fused"``: a Triton kernel computes the sinks and merges
    in one pass (:mod:`attention_backends.sink_merge`). Planned with ``generated_from`` (the plan
    of a layer with FA decode for a batch that holds generated rows), the rows at or past their
    request's prompt length see everything before the window: single rows through the FlashInfer
    extra pass, longer runs through a causal pass over their gathered rows
    (:func:`attention_backends.planning.plan_generated`).
    """

    def __init__(self, workspace: torch.Tensor, heads: HeadConfig, window: int, keep_first: int, backend: str = "fa2",
                 sinks: str = "flashinfer"):
        if sinks not in SINK_IMPLS:
            raise ValueError(f"sinks: expected one of {SINK_IMPLS}; got {sinks!r}")
        self.heads, self.window, self.keep_first, self.sinks = heads, window, keep_first, sinks
        self.fused: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None  # slots, blocks, limits
        self.window_wrapper = BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend=backend)
        self.extra_wrapper = BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend=backend)
        self.generated_wrapper = BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend=backend)
        self.ones = _Ones(workspace.device)
        self.merge_mask: Optional[torch.Tensor] = None
        self.generated_rows: Optional[torch.Tensor] = None  # rows of the causal generated pass, on the device

    def _plan(self, wrapper, seg: Segments, slots: torch.Tensor, causal: bool, window_left: int) -> None:
        h = self.heads
        wrapper.plan(
            seg.qo_indptr, seg.kv_indptr, slots, self.ones(seg.num_segments),
            h.num_qo_heads, h.num_kv_heads, h.head_dim, 1,
            causal=causal, window_left=window_left, q_data_type=h.q_dtype, kv_data_type=h.kv_dtype,
        )

    def plan(
        self,
        prefix_lens_cpu: torch.Tensor,
        extend_lens_cpu: torch.Tensor,
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        generated_from_cpu: Optional[torch.Tensor] = None,
        slot_map: Optional[SlotMap] = None,
    ) -> None:
        """``generated_from_cpu`` ([bs], each request's prompt length): give rows at or past it FA decode
        (None: every row keeps the prompt rule). ``slot_map``: see :func:`map_slots` (None: the full pool)."""
        win = plan_window(prefix_lens_cpu, extend_lens_cpu, self.window)
        self._plan(self.window_wrapper, win, slots_on_device(win, req_to_token, req_pool_indices, slot_map), True,
                   self.window - 1)
        self.merge_mask = self.fused = self.generated_rows = None
        has_generated = generated_from_cpu is not None and bool(
            (prefix_lens_cpu + extend_lens_cpu > generated_from_cpu).any()
        )
        if not has_generated:
            generated_from_cpu = None
        if self.sinks == "fused" and not has_generated:
            limits = sink_limits(prefix_lens_cpu, extend_lens_cpu, self.window, self.keep_first)
            if int(limits.max()) > 0:
                dev = req_to_token.device
                sink_slots = map_slots(req_to_token[req_pool_indices.long(), : self.keep_first], slot_map).contiguous()
                blocks = row_blocks(extend_lens_cpu, 64).to(dev, non_blocking=True)
                self.fused = (sink_slots, blocks, limits.to(dev, non_blocking=True))
            return
        extra = plan_extra(prefix_lens_cpu, extend_lens_cpu, self.window, self.keep_first, generated_from_cpu)
        if not extra.empty:
            seg = extra.segments
            self._plan(self.extra_wrapper, seg, slots_on_device(seg, req_to_token, req_pool_indices, slot_map), False, -1)
            self.merge_mask = extra.merge_mask.to(req_to_token.device, non_blocking=True)
        if has_generated:
            gen = plan_generated(prefix_lens_cpu, extend_lens_cpu, self.window, generated_from_cpu)
            if gen is not None:
                seg = gen.segments
                self._plan(self.generated_wrapper, seg, slots_on_device(seg, req_to_token, req_pool_indices, slot_map),
                           True, -1)
                self.generated_rows = gen.rows.to(req_to_token.device, non_blocking=True)

    def run(self, q: torch.Tensor, kv_cache, sm_scale: float, logits_soft_cap: float = 0.0,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None) -> torch.Tensor:
        """q ``[tokens, hq, d]`` -> out ``[tokens, hq, d]``; KV of these tokens must already be in the pool."""
        o, lse = self.window_wrapper.forward_return_lse(
            q, kv_cache, causal=True, window_left=self.window - 1, sm_scale=sm_scale,
            logits_soft_cap=logits_soft_cap, k_scale=k_scale, v_scale=v_scale,
        )
        if self.fused is not None:
            if k_scale not in (None, 1.0) or v_scale not in (None, 1.0):
                raise NotImplementedError("fused sinks: scaled (quantized) KV caches are not supported")
            sink_slots, blocks, limits = self.fused
            sink_merge(q, kv_cache[0], kv_cache[1], o, lse, sink_slots, blocks, limits, sm_scale)
        elif self.merge_mask is not None:
            o_extra, lse_extra = self.extra_wrapper.forward_return_lse(
                q, kv_cache, causal=False, sm_scale=sm_scale,
                logits_soft_cap=logits_soft_cap, k_scale=k_scale, v_scale=v_scale,
            )
            merge_state_in_place(o, lse, o_extra, lse_extra, mask=self.merge_mask)
        if self.generated_rows is not None:
            rows = self.generated_rows
            o_gen, lse_gen = self.generated_wrapper.forward_return_lse(
                q[rows], kv_cache, causal=True, sm_scale=sm_scale,
                logits_soft_cap=logits_soft_cap, k_scale=k_scale, v_scale=v_scale,
            )
            # the last merge: only o is kept (these rows merge nothing else, lse is not returned)
            o[rows] = merge_state(o[rows], lse[rows], o_gen, lse_gen)[0].to(o.dtype)
        return o


class SlidingDecode:
    """Decode without FA decode: one pass over ``sinks ++ last W``."""

    def __init__(self, wrapper: BatchDecodeWithPagedKVCacheWrapper, heads: HeadConfig, window: int, keep_first: int):
        self.wrapper, self.heads, self.window, self.keep_first = wrapper, heads, window, keep_first
        self.ones = _Ones(wrapper._float_workspace_buffer.device)

    @staticmethod
    def make_wrapper(workspace: torch.Tensor, use_tensor_cores: bool = True, **graph_buffers) -> BatchDecodeWithPagedKVCacheWrapper:
        # tensor cores: the prefill kernel on a one-row query, GQA-friendly
        return BatchDecodeWithPagedKVCacheWrapper(
            workspace, "NHD", use_tensor_cores=use_tensor_cores, use_cuda_graph=bool(graph_buffers), **graph_buffers
        )

    def plan(self, seq_lens_cpu: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
             seq_lens: Optional[torch.Tensor] = None, slot_map: Optional[SlotMap] = None) -> None:
        """``seq_lens_cpu`` sizes the plan on the host; ``seq_lens`` (same values, on the GPU) fills it.

        ``slot_map``: see :func:`map_slots`. A CUDA-graph wrapper copies the mapped list into its
        fixed buffer here, out of the graph, before every replay.
        """
        h = self.heads
        bs = seq_lens_cpu.numel()
        n_sink, _, win_len = decode_ranges(seq_lens_cpu, self.window, self.keep_first)
        kv_indptr = torch.zeros(bs + 1, dtype=torch.int32)
        kv_indptr[1:] = torch.cumsum(n_sink + win_len, 0)
        self.wrapper.plan(
            kv_indptr,
            map_slots(self._gather(seq_lens, seq_lens_cpu, req_to_token, req_pool_indices, int(kv_indptr[-1])), slot_map),
            self.ones(bs), h.num_qo_heads, h.num_kv_heads, h.head_dim, 1, data_type=h.kv_dtype, q_data_type=h.q_dtype,
        )

    def _gather(self, seq_lens, seq_lens_cpu, req_to_token, req_pool_indices, total: int) -> torch.Tensor:
        """KV slots of ``sinks ++ window`` per request: two range copies out of ``req_to_token``.

        Built on the pool's device from batch-sized tensors, so the ``bs * (W + k)`` index list
        never crosses from the host.
        """
        dev = req_to_token.device
        seq_lens = seq_lens_cpu.to(dev, non_blocking=True) if seq_lens is None else seq_lens
        n_sink, win_start, win_len = decode_ranges(seq_lens, self.window, self.keep_first)
        offsets = torch.cumsum(n_sink + win_len, 0) - (n_sink + win_len)
        out = torch.empty(max(total, 1), dtype=torch.int32, device=dev)
        copy_ranges(req_to_token, req_pool_indices, n_sink, offsets, None, out)
        copy_ranges(req_to_token, req_pool_indices, win_len, offsets + n_sink, win_start, out)
        return out[:total]

    def run(self, q: torch.Tensor, kv_cache, sm_scale: float, logits_soft_cap: float = 0.0,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None) -> torch.Tensor:
        return self.wrapper.forward(
            q, kv_cache, sm_scale=sm_scale, logits_soft_cap=logits_soft_cap, k_scale=k_scale, v_scale=v_scale
        )
