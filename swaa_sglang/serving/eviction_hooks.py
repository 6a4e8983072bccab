"""Window-eviction hooks (every process): SGLang's hybrid SWA pool switched on for SWAA, sinks kept,
window frees counted, and admission that reserves the SWA slots running requests will still use.

Each hook is a no-op unless this process serves the swaa backend with window eviction on (the
admission hooks: unless the tree cache is the SWAA eviction cache). The hooks are declared as data
(:data:`HOOKS`, :data:`ADMISSION_RESERVE_HOOKS`, :data:`ADMISSION_ONE_CHUNK_HOOKS`) on targets of
the seam table; ``swaa_sglang.serving.plugin`` registers them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Optional

from attention_backends import admission
from attention_backends.eviction_policy import sink_floor

from . import seam
from .server_args import (
    BACKEND_NAME,
    EVICTION_CACHE,
    OVERRIDE_KEY,
    config_from_override_args,
    eviction_on,
    hybrid_overrides,
)

logger = logging.getLogger("swaa_sglang")

RADIX_CACHE_NAME = EVICTION_CACHE


def _eviction_model_config(model_config) -> None:
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
    # the same canonical JSON for the same block: parsed once per process (config_from_override_args caches it)
    config = config_from_override_args(json.dumps({OVERRIDE_KEY: raw}, sort_keys=True))
    if config is None:
        return None
    # Decided in the launching process (its ServerArgs hook); deciding the default again here from
    # the same layer count gives the same answer, and keeps a ModelConfig built on its own consistent.
    config = config.with_eviction_resolved(model_config.hf_text_config.num_hidden_layers)
    if not config.evict_window:
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
    return None


def sink_floor_hook(keep_first: int, page_size: int = 1) -> Callable[[Any], None]:
    """``req -> None``: raise the request's ``swa_evict_floor`` to the page-ceiled sink length K.

    SGLang's ``free_swa_out_of_window_slots`` then never frees ``[0, K)`` of a request's own KV;
    the tree protects cached sinks with the sink lock (docs/design/eviction.md).
    """
    floor = sink_floor(keep_first, page_size)

    def raise_floor(req) -> None:
        req.swa_evict_floor = max(getattr(req, "swa_evict_floor", 0), floor)

    return raise_floor


_floor_hooks: dict[tuple[str, Optional[int]], Optional[Callable[[Any], None]]] = {}


def _eviction_floor_hook() -> Optional[Callable[[Any], None]]:
    """The sink-floor setter when this process serves SWAA with window eviction on, else None.

    None also where no server args are published (a ``Req`` built outside a server). Cached per
    (override, page size): the scheduler's hooks ask on every request and step.
    """
    server_args = seam.published_server_args()
    if server_args is None or getattr(server_args, "attention_backend", None) != BACKEND_NAME:
        return None
    key = (server_args.json_model_override_args, server_args.page_size)
    if key not in _floor_hooks:
        config = config_from_override_args(server_args.json_model_override_args)
        on = config is not None and eviction_on(config)
        _floor_hooks[key] = sink_floor_hook(config.keep_first, server_args.page_size or 1) if on else None
    return _floor_hooks[key]


def _req_sink_floor(result: None, req) -> None:
    """AFTER hook on ``Req.__init__`` (scheduler): ``swa_evict_floor = K`` when eviction is on."""
    raise_floor = _eviction_floor_hook()
    if raise_floor is not None:
        raise_floor(req)
    return None


class WindowFreeCounter:
    """KV slots freed by window eviction in this process (the scheduler's), logged at most every
    ``interval`` seconds: one slot is one token's KV in every windowed layer (SWA pool)."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.interval = interval
        self.total = 0
        self.since_log = 0
        self.last_log = self.clock()

    def add(self, slots: int) -> None:
        self.total += slots
        self.since_log += slots
        now = self.clock()
        if self.since_log and now - self.last_log >= self.interval:
            logger.info("swaa: window eviction freed %d KV slots in the SWA pool in the last %.0f s (%d since start)",
                        self.since_log, now - self.last_log, self.total)
            self.since_log, self.last_log = 0, now


WINDOW_FREES = WindowFreeCounter()


def count_window_frees(proceed: Callable[[], Any], allocator, counter: Optional[WindowFreeCounter] = None):
    """Run SGLang's ``free_swa_out_of_window_slots`` (``proceed``) and count the SWA slots it frees.

    The function frees through ``allocator.free_swa``; for the length of the call that method is
    shadowed on the instance by one that counts, then removed again.
    """
    counter = WINDOW_FREES if counter is None else counter
    real = allocator.free_swa
    freed = 0

    def free_swa(slots):
        nonlocal freed
        freed += len(slots)
        return real(slots)

    allocator.free_swa = free_swa
    try:
        return proceed()
    finally:
        del allocator.free_swa
        counter.add(freed)


def _count_window_frees(proceed: Callable[[], Any], allocator):
    """AROUND hook on ``free_swa_out_of_window_slots`` as ``ScheduleBatch._evict_swa`` calls it
    (scheduler): count the freed slots when SWAA eviction is on here (a native-SWA model served
    without SWAA is left alone)."""
    if _eviction_floor_hook() is None:
        return proceed()
    return count_window_frees(proceed, allocator)


def _radix_cache_factory(ctx):
    """``--radix-cache-backend swaa`` (scheduler): the sink-aware SWA radix cache, k from the SWAA config."""
    from attention_backends.radix_cache import make_radix_cache_factory

    config = config_from_override_args(ctx.server_args.json_model_override_args)
    if config is None or not eviction_on(config):
        raise ValueError(
            f"radix_cache_backend: '{RADIX_CACHE_NAME}' is SWAA's window-eviction cache; it needs a SWAA config "
            "with window eviction on (the default where a layer is windowed; \"evict_window\": true)"
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


HOOKS = (
    seam.hook(seam.MODEL_CONFIG_DERIVE_HYBRID, _eviction_model_config),
    seam.hook(seam.REQ_INIT, _req_sink_floor),
    seam.hook(seam.FREE_SWA_OUT_OF_WINDOW_SLOTS, _count_window_frees),
)
# attention_backends.admission: each a no-op unless the scheduler's tree cache is SWAASinkRadixCache.
# Two groups, so that the CPU scheduler replay (tests/scheduler_replay.py) can leave either out.
ADMISSION_RESERVE_HOOKS = (
    seam.hook(seam.PREFILL_ADDER_INIT, admission.reserve_running_growth),
    seam.hook(seam.PREFILL_ADDER_ADD_CHUNKED_REQ, admission.reserve_chunked_growth),
    seam.hook(seam.PREFILL_ADDER_SWA_RESERVED_TOKENS, admission.reserve_new_request_growth),
)
ADMISSION_ONE_CHUNK_HOOKS = (seam.hook(seam.PREFILL_ADDER_ADD_ONE_REQ, admission.one_chunked_request_per_pass),)
