"""In-server op check: compare the backend's attention outputs with the float64 reference.

Off unless ``SWAA_OP_CHECK_FILE`` names a file. Then the first ``SWAA_OP_CHECK_MAX``
(default 64) eager sliding-layer calls per mode (extend, decode; ``SWAA_OP_CHECK_MODES`` may name
one of them) of each worker recompute attention with
``swaa_sglang.reference.swaa_attention`` from the KV pool itself and append one JSON
line per call (mode, layer, relative error, batch shape) to the file. It runs inside
a real server or Engine, so it checks what was served, for any model, page size,
tensor-parallel rank or batch mix. Calls inside CUDA-graph capture are skipped
(the check synchronizes); the engine tests cover graphs end to end.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

from swaa_sglang.config import SWAAConfig
from swaa_sglang.reference import swaa_attention, visibility_mask


MODES = ("extend", "decode")


class OpCheck:
    def __init__(self, config: SWAAConfig, path: str, budget: int, modes: tuple[str, ...] = MODES):
        # per mode: long prompts must not use up the budget before any decode call is checked
        self.config, self.path = config, path
        self.budget = {mode: budget if mode in modes else 0 for mode in MODES}

    @classmethod
    def from_env(cls, config: SWAAConfig) -> Optional["OpCheck"]:
        path = os.environ.get("SWAA_OP_CHECK_FILE")
        if not path:
            return None
        modes = tuple(m.strip() for m in os.environ.get("SWAA_OP_CHECK_MODES", ",".join(MODES)).split(",") if m.strip())
        if not modes or not set(modes) <= set(MODES):
            raise ValueError(f"SWAA_OP_CHECK_MODES: expected a comma list of {', '.join(MODES)}; got {modes!r}")
        return cls(config, path, int(os.environ.get("SWAA_OP_CHECK_MAX", "64")), modes)

    def wanted(self, mode: str) -> bool:
        return self.budget[mode] > 0 and not torch.cuda.is_current_stream_capturing()

    def check(self, mode: str, layer, out: torch.Tensor, q: torch.Tensor, kv_cache, req_to_token, forward_batch,
              slot_map=None, generated_from: Optional[torch.Tensor] = None) -> None:
        """``out``/``q``: ``[tokens, hq * d]``; rows are the batch's requests in order.

        ``generated_from`` ([bs], extend batches): each request's prompt length; rows at or past it
        are generated tokens (FA decode applies to them). None: every extend row is a prompt row.

        ``kv_cache`` is the buffer the layer reads; ``slot_map`` turns ``req_to_token``'s full-pool
        slots into that buffer's slots (the SWA pool's translation on windowed layers under window
        eviction, else None). KV of positions no query of the call sees may be evicted (its slot
        stale or freed): those keys are zeroed before the reference runs, so they cannot leak
        NaN/inf into it; they are masked out anyway.
        """
        self.budget[mode] -= 1
        hq, d = layer.tp_q_head_num, layer.head_dim
        k_buf, v_buf = kv_cache
        q = q.reshape(-1, hq, d)
        out = out.reshape(-1, hq, d)
        if mode == "decode":
            seq_lens = forward_batch.seq_lens.tolist()
            q_lens = [1] * len(seq_lens)
            prompt_lens = [0] * len(seq_lens)  # every decode row is generated
        else:
            q_lens = list(forward_batch.extend_seq_lens_cpu)
            seq_lens = [p + e for p, e in zip(forward_batch.extend_prefix_lens_cpu, q_lens)]
            prompt_lens = seq_lens if generated_from is None else [int(g) for g in generated_from]
        refs, row, n_generated = [], 0, 0
        for b, (L, n) in enumerate(zip(seq_lens, q_lens)):
            slots = req_to_token[forward_batch.req_pool_indices[b], :L]
            slots = (slots if slot_map is None else slot_map(slots)).long()
            k, v = k_buf[slots].double(), v_buf[slots].double()
            q_pos = torch.arange(L - n, L, device=q.device)
            k_pos = torch.arange(L, device=q.device)
            generated = q_pos >= prompt_lens[b]
            n_generated += int(generated.sum())
            seen = visibility_mask(self.config, layer.layer_id, q_pos, k_pos, generated).any(0).to(k.device)
            k[~seen] = 0
            v[~seen] = 0
            refs.append(swaa_attention(
                q[row : row + n].double(), k, v, self.config, layer.layer_id, q_pos,
                k_pos, decode=generated, scale=layer.scaling,
            ))
            row += n
        ref = torch.cat(refs)
        err = float((out[:row].double() - ref).norm() / ref.norm().clamp_min(1e-30))
        record = {"mode": mode, "layer": layer.layer_id, "generated_rows": n_generated if mode != "decode" else 0,
                  "rel_err": err, "batch": len(seq_lens),
                  "tokens": row, "max_seq_len": max(seq_lens), "finite": bool(torch.isfinite(out[:row]).all())}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
