"""The SWAA visibility rule and attention computed from it (CPU reference).

The rule (../shared/design/SWAA.md) is written once, in :func:`visibility_mask`:
on a sliding layer a query at absolute position i sees key j iff
``j <= i and (i - j < W or j < k)``; on a full layer, and on a sliding layer
for generated tokens when FA decode is on, iff ``j <= i``.
Everything else in the project is tested against this function.
"""

from __future__ import annotations

import math

import torch

from .config import SWAAConfig


def visibility_mask(
    config: SWAAConfig,
    layer_id: int,
    q_positions: torch.Tensor,
    k_positions: torch.Tensor,
    decode: bool | torch.Tensor = False,
) -> torch.Tensor:
    """Bool ``[nq, nk]``: may the query at ``q_positions[a]`` see the key at ``k_positions[b]``.

    ``decode`` marks generated tokens: one flag for all queries, or a bool tensor ``[nq]``.
    """
    q = q_positions.reshape(-1, 1).long()
    k = k_positions.reshape(1, -1).long()
    causal = k <= q
    if not config.is_sliding(layer_id):
        return causal
    decode = torch.as_tensor(decode, dtype=torch.bool, device=q.device).reshape(-1, 1)
    sees_all = decode & config.uses_fa_decode(layer_id)
    in_window = (q - k) < config.sliding_window_size
    sink = k < config.keep_first
    return causal & (sees_all | in_window | sink)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q ``[nq, hq, d]`` over k/v ``[nk, hk, d]`` under a bool mask ``[nq, nk]``.

    GQA: ``hq`` must be a multiple of ``hk``. Computed in the inputs' dtype promoted
    to at least float32. Returns (out ``[nq, hq, dv]``, lse ``[nq, hq]`` in base 2, as
    FlashInfer reports it). A query that sees no key gets out 0 and lse -inf.
    """
    nq, hq, d = q.shape
    nk, hk, _ = k.shape
    if hq % hk:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hk})")
    dtype = _compute_dtype(q, k, v)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    group = hq // hk
    qf = q.to(dtype).transpose(0, 1)  # [hq, nq, d]
    kf = k.to(dtype).repeat_interleave(group, dim=1).transpose(0, 1)  # [hq, nk, d]
    vf = v.to(dtype).repeat_interleave(group, dim=1).transpose(0, 1)
    scores = (qf @ kf.transpose(1, 2)) * scale  # [hq, nq, nk]
    scores = scores.masked_fill(~mask.to(scores.device).unsqueeze(0), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # natural log, -inf on empty rows
    probs = torch.exp(scores - lse.unsqueeze(-1).clamp_min(torch.finfo(dtype).min))
    probs = torch.nan_to_num(probs, nan=0.0)
    out = (probs @ vf).transpose(0, 1)  # [nq, hq, dv]
    return out, (lse / math.log(2.0)).transpose(0, 1)


def swaa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: SWAAConfig,
    layer_id: int,
    q_positions: torch.Tensor,
    k_positions: torch.Tensor,
    decode: bool | torch.Tensor = False,
    scale: float | None = None,
) -> torch.Tensor:
    """SWAA attention for one sequence: q ``[nq, hq, d]``, k/v ``[nk, hk, d]`` -> ``[nq, hq, d]``."""
    mask = visibility_mask(config, layer_id, q_positions, k_positions, decode)
    out, _ = masked_attention(q, k, v, mask, scale)
    return out
