"""Batch-marking hooks: which rows of a mixed prefill/decode batch are generated tokens.

The backend needs them for FA decode; SGLang's ForwardBatch does not carry them.
"""

from __future__ import annotations

MARK_ATTR = "swaa_mixed_decode_rows"  # set on ForwardBatch, read by the backend


def _mark_mixed_decode_rows(result, *args, **kwargs):
    """AFTER hook on ``ForwardBatch.init_new``: how many requests at the end of a mixed batch are decoding.

    SGLang folds running decode requests into a prefill batch (``--enable-mixed-chunk``) as
    one-token extends appended after the prefill requests, and keeps them in
    ``ScheduleBatch.decoding_reqs``, which the ForwardBatch does not carry. FA decode needs to
    know those rows; the backend refuses a mixed batch that this hook did not mark.
    """
    batch = kwargs.get("batch", args[1] if len(args) > 1 else None)
    mixed = result.forward_mode.is_mixed()
    setattr(result, MARK_ATTR, len(getattr(batch, "decoding_reqs", None) or []) if mixed else 0)
    return result


def _carry_mixed_marking(result, *args, **kwargs):
    """AFTER hook on ``EagerRunner.load_batch``: keep the marking on the batch the model runs.

    SGLang 0.5.17's eager runner copies the ForwardBatch into static buffers and hands on a
    new object built from the dataclass fields only, which drops the attribute set by
    :func:`_mark_mixed_decode_rows`.
    """
    source = kwargs.get("forward_batch", args[1] if len(args) > 1 else None)
    if result is not None and source is not None and hasattr(source, MARK_ATTR):
        setattr(result, MARK_ATTR, getattr(source, MARK_ATTR))
    return result


