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

from .server_args import BACKEND_NAME, EVICTION_CACHE, OVERRIDE_KEY, config_from_override_args, hybrid_overrides

logger = logging.getLogger("swaa_sglang")

_registered = False

RADIX_CACHE_NAME = EVICTION_CACHE  # --radix-cache-backend name of attention_backends.eviction.SWAASinkRadixCache
# SGLang's ServerArgs.swa_full_tokens_ratio default; replaced for SWAA eviction unless the user set another
_SGLANG_DEFAULT_SWA_RATIO = 0.8


def suggested_swa_full_tokens_ratio(window: int, keep_first: int, context_len: int, page_size: int = 1,
                                    eviction_interval: int = 128) -> float:
    """``--swa-full-tokens-ratio`` for SWAA eviction: SWA-pool tokens per full-pool token.

    A running request of length L holds L tokens in the full pool (its full and FA-decode layers)
    but only about ``W + k + interval + page`` in the SWA pool (sinks, window, and what SGLang frees
    only every ``SGLANG_SWA_EVICTION_INTERVAL`` decode steps). Balancing both pools for requests of
    half the context length gives ``2 (W + k + interval + page) / context_len``: long requests are
    then limited by the full pool, as they must be, and the SWA pool is not sized for whole
    sequences (SGLang's 0.8 would spend most of the KV memory on windows). Clamped to (0, 1].
    """
    need = window + keep_first + eviction_interval + page_size
    return min(1.0, max(1e-4, 2.0 * need / max(context_len, 1)))


def _prepare_server_args(server_args, *args, **kwargs):
    """BEFORE hook on ``ServerArgs.__post_init__``: check SWAA args in the launching process.

    Runs before SGLang resolves its defaults, so a bad SWAA config stops the server at
    start with the field named, and the prefill CUDA graph (which would capture the
    windowed plan of one batch) is turned off for the swaa backend.
    """
    from attention_backends.registration import check_server_args, uses_swaa

    if not uses_swaa(server_args):
        return None
    config = check_server_args(server_args)
    if config.evict_window:
        chosen = getattr(server_args, "radix_cache_backend", None)
        if chosen is None:
            logger.info("swaa: window eviction on; radix cache backend '%s' (sink-aware SWA radix cache)",
                        RADIX_CACHE_NAME)
            server_args.radix_cache_backend = RADIX_CACHE_NAME
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
    mc = server_args.get_model_config()
    ours = getattr(mc, "swaa_eviction_window", None)  # set by the model-config hook when eviction is on
    config = check_model(check_server_args(server_args), facts_from_model_config(mc, ours, ours is not None))
    if config.evict_window:
        _configure_eviction(server_args, config, mc)
    return None


def _configure_eviction(server_args, config, mc) -> None:
    """Launcher side of window eviction: pool ratio and what applies where (logged)."""
    from sglang.srt.environ import envs

    from .server_args import hybrid_layer_pattern, with_config

    if not getattr(mc, "is_hybrid_swa", False):
        raise ValueError(
            "evict_window: SGLang did not switch the hybrid SWA pool on for this model (the plugin's hook on "
            "ModelConfig._derive_hybrid_model did not run, or --disable-hybrid-swa-memory is set)"
        )
    pattern = hybrid_layer_pattern(config, mc.num_hidden_layers)
    # The layer count is known now: write the whole hybrid override, so that what the worker
    # processes receive (and what the logs show) is explicit; their hook recomputes the same.
    override = with_config(server_args.json_model_override_args, config, mc.num_hidden_layers)
    if override != server_args.json_model_override_args:
        server_args.override("swaa", json_model_override_args=override)
    ratio = server_args.swa_full_tokens_ratio
    if ratio == _SGLANG_DEFAULT_SWA_RATIO:
        ratio = suggested_swa_full_tokens_ratio(
            config.sliding_window_size, config.keep_first, mc.context_len, server_args.page_size or 1,
            max(1, envs.SGLANG_SWA_EVICTION_INTERVAL.get()),
        )
        server_args.override("swaa", swa_full_tokens_ratio=ratio)
    windowed = config.windowed_layers(mc.num_hidden_layers)
    logger.info(
        "swaa: window eviction on: %d/%d layers keep sinks + window only (SWA pool, SGLang window %d), "
        "%d layers keep all KV (full pool)%s; swa_full_tokens_ratio %.4g; radix cache backend %s",
        sum(pattern), len(pattern), config.sliding_window_size - 1, len(pattern) - sum(pattern),
        " (incl. windowed layer %d, kept whole so the hybrid allocator is used)" % (len(pattern) - 1)
        if len(windowed) == len(pattern) else "",
        ratio, server_args.radix_cache_backend,
    )


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
            from attention_backends.eviction import sink_floor_hook

            hook = sink_floor_hook(config.keep_first, server_args.page_size or 1)
        _eviction_cache[key] = hook
    return _eviction_cache[key]


def _req_sink_floor(result, req, *args, **kwargs):
    """AFTER hook on ``Req.__init__`` (scheduler): ``swa_evict_floor = K`` when eviction is on.

    SGLang's ``free_swa_out_of_window_slots`` then never frees a live request's sinks
    (``attention_backends.eviction.sink_floor_hook``; EVICTION.md (b)).
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
    from attention_backends.eviction import count_window_frees

    return count_window_frees(original, req, pre_len, *args, **kwargs)


def _radix_cache_factory(ctx):
    """``--radix-cache-backend swaa`` (scheduler): the sink-aware SWA radix cache, k from the SWAA config."""
    from attention_backends.eviction import make_radix_cache_factory

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


# SGLang 0.5.17: ScheduleBatch._evict_swa calls this module-level name (imported from mem_cache.common)
WINDOW_FREE_TARGET = "sglang.srt.managers.schedule_batch.free_swa_out_of_window_slots"
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
