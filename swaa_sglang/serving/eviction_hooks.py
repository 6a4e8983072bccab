"""Window-eviction hooks (every process): SGLang's hybrid SWA pool switched on for SWAA, sinks kept.

Each hook is a no-op unless this process serves the swaa backend with ``evict_window`` on.
"""

from __future__ import annotations

import logging

from .server_args import BACKEND_NAME, EVICTION_CACHE, OVERRIDE_KEY, config_from_override_args, hybrid_overrides

logger = logging.getLogger("swaa_sglang")

RADIX_CACHE_NAME = EVICTION_CACHE
# SGLang 0.5.17: ScheduleBatch._evict_swa calls this module-level name (imported from mem_cache.common)
WINDOW_FREE_TARGET = "sglang.srt.managers.schedule_batch.free_swa_out_of_window_slots"


def _eviction_model_config(model_config, *args, **kwargs):
    """BEFORE hook on ``ModelConfig._derive_hybrid_model``, every process: switch SGLang's hybrid SWA pool on.

    The ``swaa`` key of ``--json-model-override-args`` is already on the HF config. With
    ``evict_window`` on, this sets ``is_hybrid_swa``, ``hybrid_layer_pattern`` (windowed layers in
    the SWA pool; it needs the layer count, known only here) and ``sliding_window_size = W - 1`` on
    the HF text config, and the model config's own ``sliding_window_size`` (read before this runs).
    SGLang then derives the layer split and pools itself. Models with native SWA are refused.
    """
    raw = getattr(model_config.hf_config, OVERRIDE_KEY, None)
    if raw is None:
        return None
    config = config_from_override_args({OVERRIDE_KEY: raw})
    if config is None or not config.evict_window:
        return None
    from sglang.srt.configs.model_config import is_hybrid_swa_model

    if is_hybrid_swa_model(model_config.hf_config.architectures, None):
        raise ValueError(
            f"evict_window: {model_config.hf_config.architectures} already has native sliding-window layers; "
            "SWAA adapts full-attention models only"
        )
    if getattr(model_config, "disable_hybrid_swa_memory", False):
        raise ValueError("evict_window: needs SGLang's hybrid SWA pool; remove --disable-hybrid-swa-memory")
    text = model_config.hf_text_config
    over = hybrid_overrides(config, text.num_hidden_layers)
    for key, value in over.items():
        setattr(text, key, value)
    model_config.sliding_window_size = over["sliding_window_size"]
    model_config.swaa_eviction_window = over["sliding_window_size"]  # what registration accepts as ours
    return None


_eviction_cache: dict = {}


def _eviction_floor_hook():
    """The ``Req.__init__`` floor hook when this process serves SWAA with window eviction on, else None.

    Cached per (override, page size): the scheduler's hooks ask on every request and step."""
    from sglang.srt.runtime_context import get_server_args

    server_args = get_server_args()
    if server_args is None or getattr(server_args, "attention_backend", None) != BACKEND_NAME:
        return None
    key = (server_args.json_model_override_args, server_args.page_size)
    if key not in _eviction_cache:
        config = config_from_override_args(server_args.json_model_override_args)
        hook = None
        if config is not None and config.evict_window:
            from attention_backends.radix_cache import sink_floor_hook

            hook = sink_floor_hook(config.keep_first, server_args.page_size or 1)
        _eviction_cache[key] = hook
    return _eviction_cache[key]


def _req_sink_floor(result, req, *args, **kwargs):
    """AFTER hook on ``Req.__init__`` (scheduler): ``swa_evict_floor = K`` when eviction is on.

    SGLang's ``free_swa_out_of_window_slots`` then never frees a live request's sinks
    (``attention_backends.radix_cache.sink_floor_hook``; docs/design/eviction.md (b)).
    """
    hook = _eviction_floor_hook()
    if hook is not None:
        hook(result, req, *args, **kwargs)
    return None


def _count_window_frees(original, req, pre_len, *args, **kwargs):
    """AROUND hook on ``free_swa_out_of_window_slots`` as ``ScheduleBatch._evict_swa`` calls it
    (scheduler): count the KV slots window eviction frees, logged every minute, when SWAA eviction
    is on here (a native-SWA model served without SWAA is left alone)."""
    if _eviction_floor_hook() is None:
        return original(req, pre_len, *args, **kwargs)
    from attention_backends.radix_cache import count_window_frees

    return count_window_frees(original, req, pre_len, *args, **kwargs)


def _radix_cache_factory(ctx):
    """``--radix-cache-backend swaa`` (scheduler): the sink-aware SWA radix cache, k from the SWAA config."""
    from attention_backends.radix_cache import make_radix_cache_factory

    config = config_from_override_args(ctx.server_args.json_model_override_args)
    if config is None or not config.evict_window:
        raise ValueError(
            f"radix_cache_backend: '{RADIX_CACHE_NAME}' is SWAA's window-eviction cache; it needs a SWAA config "
            "with evict_window on (--swaa-evict-window on, or \"evict_window\": true in the swaa override)"
        )
    cache = make_radix_cache_factory(config.keep_first)(ctx)
    alloc = ctx.params.token_to_kv_pool_allocator
    full = getattr(alloc, "size_full", None)
    swa = getattr(alloc, "size_swa", None)
    logger.info(
        "swaa: window eviction: %s over full pool %s tokens, SWA pool %s tokens; window W=%d (SGLang %s), "
        "sinks k=%d kept", type(cache).__name__, full, swa, config.sliding_window_size,
        ctx.params.sliding_window_size, config.keep_first,
    )
    return cache


