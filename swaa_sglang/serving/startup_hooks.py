"""Server-args hooks (launching process): SWAA checks and window-eviction set-up before any weights load.

A bad SWAA config, or a model SWAA cannot adapt, stops the server at start with the field named,
on any device; the prefill CUDA graph (which would capture one batch's windowed plan) is turned
off for the swaa backend.
"""

from __future__ import annotations

import logging

from swaa_sglang.config import LayerSet
from swaa_sglang.model_support import check_model_config, num_layers_of, read_hf_config

from . import seam
from .checks import (
    check_backend_args,
    check_eviction_args,
    check_model,
    check_server_args,
    facts_from_model_config,
    uses_swaa,
)
from .server_args import EVICTION_CACHE, hybrid_layer_pattern, with_config

logger = logging.getLogger("swaa_sglang")

RADIX_CACHE_NAME = EVICTION_CACHE  # --radix-cache-backend name of attention_backends.radix_cache.SWAASinkRadixCache


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


def _prepare_server_args(server_args) -> None:
    """BEFORE hook on ``ServerArgs.__post_init__``: check SWAA args and the model in the launching process.

    Runs before SGLang resolves its defaults and its device, so a bad SWAA config or a model SWAA
    cannot adapt stops the server with the field named also on a machine without a GPU; the
    prefill CUDA graph (which would capture the windowed plan of one batch) is turned off for the
    swaa backend.
    """
    if not uses_swaa(server_args):
        return None
    config = check_backend_args(server_args)
    hf_config = read_hf_config(server_args.model_path, server_args.json_model_override_args,
                               trust_remote_code=bool(getattr(server_args, "trust_remote_code", False)),
                               revision=getattr(server_args, "revision", None))
    config = check_model_config(config, hf_config, getattr(server_args, "context_length", None))
    num_layers = num_layers_of(hf_config)
    if config.evict_window is None:
        # The default (on where a layer is windowed) depends on the layer count, known here: decide it
        # once and write it into the override, so that every worker process receives the decision.
        config = config.with_eviction_resolved(num_layers)
        server_args.json_model_override_args = with_config(server_args.json_model_override_args, config)
        if not config.evict_window:
            logger.info("swaa: window eviction off: no layer is windowed (each of the %d layers is full or decodes "
                        "with full attention), so every layer keeps all of its KV", num_layers)
    elif not config.evict_window:
        logger.info("swaa: window eviction off (evict_window false): every layer keeps all of its KV")
    check_eviction_args(server_args, config)
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


def _check_model(result: None, server_args) -> None:
    """AFTER hook on ``ServerArgs.__post_init__``: the model as SGLang resolved it (MLA, encoder-decoder,
    the eviction window), layer ids and sinks against it, in the launcher, before any weights load."""
    if not uses_swaa(server_args):
        return None
    mc = server_args.get_model_config()
    config = check_server_args(server_args)
    # With eviction on, the window SGLang resolved must be the one our model-config hook set. Without
    # it a config window was judged by model_support (an inactive one, as in Qwen2 configs, is fine).
    window = mc.sliding_window_size if config.evict_window else None
    config = check_model(config, facts_from_model_config(mc, window))
    if config.evict_window:
        _configure_eviction(server_args, config, mc)
    return None


def _configure_eviction(server_args, config, mc) -> None:
    """Launcher side of window eviction: pool ratio and what applies where (logged)."""
    from sglang.srt.environ import envs

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
    # SGLang keeps no record of user-set args; like SGLang itself, take a value equal to the field's default as unset.
    if ratio == seam.server_args_default("swa_full_tokens_ratio"):
        ratio = suggested_swa_full_tokens_ratio(
            config.sliding_window_size, config.keep_first, mc.context_len, server_args.page_size or 1,
            max(1, envs.SGLANG_SWA_EVICTION_INTERVAL.get()),
        )
        server_args.override("swaa", swa_full_tokens_ratio=ratio)
    windowed = config.windowed_layers(mc.num_hidden_layers)
    evicted = [i for i, in_swa_pool in enumerate(pattern) if in_swa_pool]
    logger.info(
        "swaa: window eviction on: %d/%d layers keep sinks + window only (layers %s; SWA pool, SGLang window %d), "
        "%d layers keep all KV (full pool)%s; swa_full_tokens_ratio %.4g; radix cache backend %s",
        sum(pattern), len(pattern), LayerSet(ids=tuple(evicted)).compact(), config.sglang_window,
        len(pattern) - sum(pattern),
        " (incl. windowed layer %d, kept whole so the hybrid allocator is used)" % (len(pattern) - 1)
        if len(windowed) == len(pattern) else "",
        ratio, server_args.radix_cache_backend,
    )


HOOKS = (
    seam.hook(seam.SERVER_ARGS_POST_INIT_BEFORE, _prepare_server_args),
    seam.hook(seam.SERVER_ARGS_POST_INIT_AFTER, _check_model),
)
