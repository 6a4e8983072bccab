"""SGLang plugin entry point (group ``sglang.srt.plugins``): registers the ``swaa`` backend.

SGLang calls :func:`load` in every process it starts and swallows exceptions
raised inside it, so this module makes its own failures loud: a plugin that
cannot register exits the process with the reason instead of leaving the
server to fail later with "invalid choice: 'swaa'".
"""

from __future__ import annotations

import logging
import sys
import traceback

from .server_args import BACKEND_NAME

logger = logging.getLogger("swaa_sglang")

_registered = False


def _prepare_server_args(server_args, *args, **kwargs):
    """BEFORE hook on ``ServerArgs.__post_init__``: check SWAA args in the launching process.

    Runs before SGLang resolves its defaults, so a bad SWAA config stops the server at
    start with the field named, and the prefill CUDA graph (which would capture the
    windowed plan of one batch) is turned off for the swaa backend.
    """
    from attention_backends.registration import check_server_args, uses_swaa

    if not uses_swaa(server_args):
        return None
    check_server_args(server_args)
    if not server_args.disable_prefill_cuda_graph:
        logger.info("swaa: prefill CUDA graph disabled (decode CUDA graphs stay on)")
        server_args.disable_prefill_cuda_graph = True
    return None


def _check_model(result, server_args, *args, **kwargs):
    """AFTER hook on ``ServerArgs.__post_init__``: the model (MLA, encoder-decoder), layer ids and sinks
    against it, in the launcher, before any weights load."""
    from attention_backends.registration import check_model, check_server_args, facts_from_model_config, uses_swaa

    if not uses_swaa(server_args):
        return None
    check_model(check_server_args(server_args), facts_from_model_config(server_args.get_model_config()))
    return None


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


def register() -> None:
    """Register the backend, its CLI choice and the server-args check. Idempotent."""
    global _registered
    if _registered:
        return
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    from attention_backends.registration import create_swaa_backend

    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])
    if BACKEND_NAME not in ATTENTION_BACKENDS:
        register_attention_backend(BACKEND_NAME)(create_swaa_backend)
    post_init = "sglang.srt.server_args.ServerArgs.__post_init__"
    HookRegistry.register(post_init, _prepare_server_args, HookType.BEFORE)
    HookRegistry.register(post_init, _check_model, HookType.AFTER)
    HookRegistry.register(
        "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new", _mark_mixed_decode_rows, HookType.AFTER
    )
    HookRegistry.register(
        "sglang.srt.model_executor.runner.eager_runner.EagerRunner.load_batch", _carry_mixed_marking, HookType.AFTER
    )
    _registered = True
    logger.info("swaa: attention backend registered")


def load() -> None:
    """The entry point. Registration failures end the process with the reason."""
    try:
        register()
    except Exception as e:  # SGLang would log and continue; we stop instead
        traceback.print_exc()
        sys.exit(f"swaa-sglang plugin failed to register the '{BACKEND_NAME}' attention backend: {e!r}")
