"""What SWAA supports, checked at start (server args, the model as SGLang sees it), and the backend creator.

The model's HF config is checked by :mod:`swaa_sglang.model_support` (launcher and worker); the
checks here add what only SGLang's server args and model runner know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from swaa_sglang.config import SWAAConfig
from swaa_sglang.model_support import check_model_config
from swaa_sglang.serving.server_args import (
    BACKEND_NAME,
    EVICTION_CACHE,
    HYBRID_KEYS,
    MISSING_CONFIG_HELP,
    config_from_override_args,
    eviction_on,
)


@dataclass(frozen=True)
class ModelFacts:
    """What the check needs to know about the model being served."""

    num_layers: int
    context_len: int
    use_mla: bool = False
    # SGLang's sliding window for the model (W - 1, exclusive): with window eviction the one the
    # plugin's model-config hook set; else any window is the model's own
    sliding_window: Optional[int] = None
    # the model class brings its own window (get_attention_sliding_window_size; known worker side)
    model_class_window: bool = False
    is_encoder_decoder: bool = False
    architecture: str = "this model"


def facts_from_model_config(mc: Any, sliding_window: Optional[int] = None,
                            model_class_window: bool = False) -> ModelFacts:
    """ModelFacts from SGLang's ``ModelConfig`` (known in the launcher, before any weights load);
    the runner's window and the model class are known worker side only."""
    from sglang.srt.configs.model_config import AttentionArch

    archs = getattr(getattr(mc, "hf_config", None), "architectures", None) or []
    return ModelFacts(
        num_layers=mc.num_hidden_layers,
        context_len=mc.context_len,
        use_mla=mc.attention_arch == AttentionArch.MLA,
        sliding_window=sliding_window,
        model_class_window=model_class_window,
        is_encoder_decoder=bool(getattr(mc, "is_encoder_decoder", False)),
        architecture=archs[0] if archs else "this model",
    )


PHASES = ("prefill_attention_backend", "decode_attention_backend")
# how refusals that depend on window eviction name it (it is on by default, so the user may not have asked)
EVICTION_IS = "evict_window, on by default where a layer is windowed"
OFF_HINT = "or turn window eviction off (--swaa-evict-window off, \"evict_window\": false)"


def uses_swaa(server_args: Any) -> bool:
    """Whether any phase of this server runs the swaa backend."""
    return BACKEND_NAME in (_get(server_args, "attention_backend"), *(_get(server_args, p) for p in PHASES))


def _get(server_args: Any, name: str, default=None):
    return getattr(server_args, name, default)


def check_backend_args(server_args: Any) -> SWAAConfig:
    """The backend choice and the server features SWAA cannot serve; returns the SWAA config as given
    (``evict_window`` possibly undecided). Raises ValueError naming the field."""
    config = config_from_override_args(_get(server_args, "json_model_override_args"))
    if config is None:
        raise ValueError(MISSING_CONFIG_HELP)
    if _get(server_args, "attention_backend") == BACKEND_NAME:
        for phase in PHASES:
            other = _get(server_args, phase)
            if other not in (None, BACKEND_NAME):
                raise ValueError(
                    f"{phase}: '{other}' would run one phase without SWAA; with --attention-backend swaa "
                    f"leave it unset or set it to 'swaa'"
                )
    else:  # only --prefill/--decode-attention-backend name swaa: both phases must
        for phase in PHASES:
            other = _get(server_args, phase)
            if other != BACKEND_NAME:
                shown = "unset (the default backend)" if other is None else f"'{other}'"
                raise ValueError(
                    f"{phase}: {shown} would run one phase without SWAA; allowed: 'swaa' for both phases, "
                    "or --attention-backend swaa alone"
                )
    if _get(server_args, "speculative_algorithm"):
        raise ValueError(
            f"speculative_algorithm: '{server_args.speculative_algorithm}' is not supported with SWAA "
            "(draft and verify passes would attend without the window); allowed: none"
        )
    if _get(server_args, "enable_deterministic_inference"):
        # SGLang refuses it too (the backend is not in its deterministic list), but with a message
        # that names neither the flag nor what SWAA would need: fixed KV split sizes in every pass
        raise ValueError(
            "enable_deterministic_inference: the swaa backend has no batch-invariant (fixed split) kernels yet, "
            "so outputs may differ with batch composition (measured in docs/benchmarks.md, Correctness on a GPU); allowed: off"
        )
    if _get(server_args, "enable_mis"):
        raise ValueError("enable_mis: multi-item scoring is not supported with SWAA; allowed: off")
    return config


def check_server_args(server_args: Any) -> SWAAConfig:
    """Refuse what SWAA cannot serve correctly; return the config. Raises ValueError naming the field.

    The config's ``evict_window`` must be decided (the launching process's hook decides the default
    first; :func:`swaa_sglang.serving.server_args.eviction_on`)."""
    return check_eviction_args(server_args, check_backend_args(server_args))


def check_eviction_args(server_args: Any, config: SWAAConfig) -> SWAAConfig:
    """What window eviction, on or off, needs from the other server args; ``config``'s ``evict_window``
    must be decided. Returns ``config``."""
    cache = _get(server_args, "radix_cache_backend")
    if eviction_on(config):
        if cache not in (None, EVICTION_CACHE):
            raise ValueError(
                f"radix_cache_backend: '{cache}' does not know SWAA sinks; window eviction ({EVICTION_IS}) needs "
                f"'{EVICTION_CACHE}' (leave --radix-cache-backend unset or set it to '{EVICTION_CACHE}'), {OFF_HINT}"
            )
        if _get(server_args, "disable_hybrid_swa_memory"):
            raise ValueError(f"disable_hybrid_swa_memory: window eviction ({EVICTION_IS}) needs SGLang's hybrid SWA "
                             f"pool; remove --disable-hybrid-swa-memory, {OFF_HINT}")
        if _get(server_args, "enable_hierarchical_cache"):
            raise ValueError(f"enable_hierarchical_cache: not supported with window eviction ({EVICTION_IS}); "
                             f"allowed: off, {OFF_HINT}")
    elif cache == EVICTION_CACHE:
        raise ValueError(
            f"radix_cache_backend: '{EVICTION_CACHE}' is SWAA's window-eviction cache, and window eviction is off "
            "for this config (set off, or no layer is windowed); leave --radix-cache-backend unset, or turn "
            "evict_window on for a config with a windowed layer (sliding, no FA decode)"
        )
    else:
        carried = _hybrid_keys_in(_get(server_args, "json_model_override_args"))
        if carried:
            raise ValueError(
                f"evict_window: the model config carries SWAA's eviction window ({', '.join(carried)} in "
                "json_model_override_args) but the config has evict_window off; allowed: evict_window on, or "
                "those keys removed"
            )
    return config


def _hybrid_keys_in(override_json: Optional[str]) -> list[str]:
    """The hybrid-SWA keys window eviction writes next to ``swaa``, as far as an override carries them."""
    data = json.loads(override_json) if override_json else {}
    return [key for key in HYBRID_KEYS if key in data] if "is_hybrid_swa" in data else []


def check_model(config: SWAAConfig, model: ModelFacts) -> SWAAConfig:
    """Refuse models SWAA cannot serve; validate layer ids against the model."""
    if model.use_mla:
        raise ValueError(f"model: {model.architecture} uses MLA attention (DeepSeek-style latent KV), which SWAA "
                         "does not support; allowed: models with standard multi-head or grouped-query attention")
    # Models whose config declares a window are refused before this (model_support); a window
    # here is the one the plugin's eviction hook set, or one the model class brings itself.
    if eviction_on(config):
        expected = config.sglang_window
        if model.model_class_window or model.sliding_window != expected:
            raise ValueError(
                f"evict_window: SGLang's hybrid SWA pool is not set up with SWAA's window (runner window "
                f"{model.sliding_window}, expected {expected} = W - 1 from the swaa override); was the "
                "plugin's model-config hook applied in this process?"
            )
    elif model.sliding_window is not None or model.model_class_window:
        shown = f" (window {model.sliding_window})" if model.sliding_window is not None else ""
        raise ValueError(
            f"model: {model.architecture} already has native sliding-window layers{shown}; SWAA adapts "
            "full-attention models only"
        )
    if model.is_encoder_decoder:
        raise ValueError(f"model: {model.architecture} is an encoder-decoder model, which SWAA does not support; "
                         "allowed: decoder-only models")
    return config.validate(model.num_layers, context_length=model.context_len)


def create_swaa_backend(runner: Any):
    """``ATTENTION_BACKENDS['swaa']``: runs in every scheduler / TP worker process (Engine too)."""
    from attention_backends.backend import SWAAFlashInferBackend

    config = check_server_args(runner.server_args)
    mc = runner.model_config
    check_model_config(config, mc.hf_config, mc.context_len)
    model_class_window = hasattr(getattr(runner, "model", None), "get_attention_sliding_window_size")
    check_model(config, facts_from_model_config(mc, runner.sliding_window_size, model_class_window))
    return SWAAFlashInferBackend(runner, config)
