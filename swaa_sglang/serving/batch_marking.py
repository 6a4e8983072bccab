"""Batch-marking hooks: each extend batch carries its requests' prompt lengths to the backend.

A row at a position at or past its request's prompt length is a generated token, whatever kind
of batch computes it: a decode row SGLang folds into a mixed prefill batch, or the output of a
retracted request that SGLang prefills again over prompt + output (``Req.reset_for_retract``
keeps ``output_ids``). FA decode needs those rows; SGLang's ForwardBatch does not carry the
prompt lengths, and the backend refuses an extend batch that arrives without them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from attention_backends.planning import GENERATED_FROM_ATTR

from . import seam


def prompt_lengths(reqs: Sequence[Any]) -> torch.Tensor:
    """``[bs]`` int64 on the CPU: ``len(req.origin_input_ids)`` per request, in batch order."""
    return torch.tensor([len(req.origin_input_ids) for req in reqs], dtype=torch.int64)


def _mark_prompt_lengths(result, batch):
    """AFTER hook on ``ForwardBatch.init_new``: attach the requests' prompt lengths to an extend batch.

    ``batch`` is the ScheduleBatch; its ``reqs`` are in the order of the batch's extend rows (in a
    mixed batch the running requests follow the prefill requests). Decode batches need no mark:
    every row is generated.
    """
    reqs: Optional[Sequence[Any]] = getattr(batch, "reqs", None)
    if result is not None and reqs is not None and not result.forward_mode.is_decode_or_idle():
        setattr(result, GENERATED_FROM_ATTR, prompt_lengths(reqs))
    return result


def _carry_prompt_lengths(result, source):
    """AFTER hook on ``EagerRunner.load_batch``: keep the mark on the batch the model runs.

    SGLang 0.5.17's eager runner copies the ForwardBatch into static buffers and hands on a
    new object built from the dataclass fields only, which drops the attribute set by
    :func:`_mark_prompt_lengths`.
    """
    if result is not None and source is not None and hasattr(source, GENERATED_FROM_ATTR):
        setattr(result, GENERATED_FROM_ATTR, getattr(source, GENERATED_FROM_ATTR))
    return result


HOOKS = (
    seam.hook(seam.FORWARD_BATCH_INIT_NEW, _mark_prompt_lengths),
    seam.hook(seam.EAGER_RUNNER_LOAD_BATCH, _carry_prompt_lengths),
)
