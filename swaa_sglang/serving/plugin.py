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

from .batch_marking import _carry_mixed_marking, _mark_mixed_decode_rows
from .eviction_hooks import (
    RADIX_CACHE_NAME,
    WINDOW_FREE_TARGET,
    _count_window_frees,
    _eviction_model_config,
    _radix_cache_factory,
    _req_sink_floor,
)
from .server_args import BACKEND_NAME
from .startup_hooks import _check_model, _prepare_server_args

logger = logging.getLogger("swaa_sglang")

_registered = False


def register() -> None:
    """Register the backend, its CLI choice and the server-args check. Idempotent."""
    global _registered
    if _registered:
        return
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    from .checks import create_swaa_backend

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
    # window eviction (opt-in per config; every hook is a no-op when it is off)
    from sglang.srt.mem_cache.registry import get_radix_cache_factory, register_radix_cache_backend

    if get_radix_cache_factory(RADIX_CACHE_NAME) is None:
        register_radix_cache_backend(RADIX_CACHE_NAME, _radix_cache_factory)
    HookRegistry.register(
        "sglang.srt.configs.model_config.ModelConfig._derive_hybrid_model", _eviction_model_config, HookType.BEFORE
    )
    HookRegistry.register("sglang.srt.managers.schedule_batch.Req.__init__", _req_sink_floor, HookType.AFTER)
    HookRegistry.register(WINDOW_FREE_TARGET, _count_window_frees, HookType.AROUND)
    from attention_backends.admission import register_admission_hooks

    register_admission_hooks()  # no-ops unless the scheduler's tree cache is SWAASinkRadixCache
    _registered = True
    logger.info("swaa: attention backend registered")


def load() -> None:
    """The entry point. Registration failures end the process with the reason."""
    try:
        register()
    except Exception as e:  # SGLang would log and continue; we stop instead
        traceback.print_exc()
        sys.exit(f"swaa-sglang plugin failed to register the '{BACKEND_NAME}' attention backend: {e!r}")
