"""How a SWAA config travels through SGLang: the ``swaa`` key of ``--json-model-override-args``.

SGLang applies ``json_model_override_args`` to the HF config in every process it
starts (scheduler, TP workers), so one JSON object reaches every worker whichever
way the server was started: ``python -m swaa_sglang.launch_server`` (which writes
it from the ``--swaa-*`` flags of :mod:`swaa_sglang.cli`), ``python -m sglang.launch_server
--attention-backend swaa --json-model-override-args '{"swaa": {...}}'``, or ``sglang.Engine(...)``.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Optional

from swaa_sglang.config import SWAAConfig
from swaa_sglang.model_support import parse_override_json

OVERRIDE_KEY = "swaa"
BACKEND_NAME = "swaa"
EVICTION_CACHE = "swaa"  # --radix-cache-backend of window eviction (registered by swaa_sglang.serving.plugin)

MISSING_CONFIG_HELP = (
    "swaa: the 'swaa' attention backend needs a SWAA config: pass "
    "--json-model-override-args '{\"swaa\": {\"sliding_window_size\": 2048, \"keep_first\": 100}}' "
    "(or {\"swaa\": {\"preset\": \"balanced\"}}; {\"swaa\": {\"sliding_window_size\": null}} for full attention), "
    "or start the server with python -m swaa_sglang.launch_server --swaa-preset NAME"
)


def config_from_override_args(override: Optional[str | dict]) -> Optional[SWAAConfig]:
    """The SWAA config carried by ``json_model_override_args``, or None if it carries none.

    A JSON string is parsed once per process (the config is frozen, so every hook and the
    backend share one object); a bad one raises ValueError naming the field every time.
    """
    if isinstance(override, dict):
        return _config_from_data(override)
    return _config_from_json(override or "")


@functools.lru_cache(maxsize=32)
def _config_from_json(override_json: str) -> Optional[SWAAConfig]:
    return _config_from_data(parse_override_json(override_json))


def _config_from_data(data: dict[str, Any]) -> Optional[SWAAConfig]:
    if OVERRIDE_KEY not in data:
        return None
    return SWAAConfig.from_dict(data[OVERRIDE_KEY])


def eviction_on(config: SWAAConfig) -> bool:
    """Whether window eviction is on, for a config as the server runs it.

    The launching process decides the default (``evict_window`` unset: on where a layer is
    windowed) once it knows the layer count, and writes the decision into
    ``json_model_override_args`` before any worker starts. An undecided config here means that
    step did not run; guessing would let the pool and the sink floor disagree, so it is refused.
    """
    if config.evict_window is None:
        raise ValueError(
            "evict_window: the swaa config reached the server undecided (its default depends on the model's "
            "layers and is decided by the plugin's ServerArgs hook in the launching process, which did not run); "
            "start through python -m swaa_sglang.launch_server, sglang.launch_server or sglang.Engine with "
            "swaa-sglang installed, or set evict_window true/false explicitly"
        )
    return config.evict_window


# HF-config keys that switch SGLang's hybrid SWA pool on (configs/model_config.py):
# is_hybrid_swa_model() accepts any config with is_hybrid_swa, get_hybrid_layer_ids()
# reads hybrid_layer_pattern (1 = SWA pool, 0 = full pool), _get_sliding_window_size()
# reads sliding_window_size first.
HYBRID_KEYS = ("is_hybrid_swa", "hybrid_layer_pattern", "sliding_window_size")


def hybrid_layer_pattern(config: SWAAConfig, num_layers: int) -> list[int]:
    """SGLang's ``hybrid_layer_pattern`` for window eviction: 1 = KV in the SWA pool (evictable).

    Windowed layers (sliding, no FA decode) are 1; full and FA-decode layers 0. If every layer
    is windowed, the last one is declared 0 all the same: SGLang would otherwise pick its
    all-SWA allocator and cache, which cache only ``[0, swa_evict_floor)`` of a finished request
    (no prefix reuse) and are not validated with sinks; one layer of full KV buys the hybrid
    allocator and :class:`attention_backends.radix_cache.SWAASinkRadixCache` (docs/design/eviction.md,
    "All layers windowed"). The attention of that layer is still windowed: the backend decides
    what is windowed, the pattern only says where the KV lives.
    """
    pattern = [1 if config.windowed_decode(i) else 0 for i in range(num_layers)]
    if num_layers and all(pattern):
        pattern[-1] = 0
    return pattern


def hybrid_overrides(config: SWAAConfig, num_layers: Optional[int] = None) -> dict[str, Any]:
    """The HF-config keys that window eviction adds next to ``swaa`` (empty when it is off).

    Their ``sliding_window_size`` is SGLang's window, W - 1 (:attr:`SWAAConfig.sglang_window`),
    not the ``swaa`` block's W.

    ``hybrid_layer_pattern`` needs the layer count; without it only the other two keys are given
    (the plugin's model-config hook completes the pattern in every process).
    """
    if not config.evict_window:
        return {}
    out: dict[str, Any] = {"is_hybrid_swa": True, "sliding_window_size": config.sglang_window}
    if num_layers is not None:
        out["hybrid_layer_pattern"] = hybrid_layer_pattern(config, num_layers)
    return out


def with_config(override_json: Optional[str], config: SWAAConfig, num_layers: Optional[int] = None) -> str:
    """``json_model_override_args`` with the SWAA config set (other keys kept).

    With ``evict_window`` on, also the hybrid-SWA keys of :func:`hybrid_overrides` (the pattern
    only when ``num_layers`` is given; otherwise the plugin's model-config hook adds it).
    """
    data = parse_override_json(override_json)
    data[OVERRIDE_KEY] = config.to_dict()
    data.update(hybrid_overrides(config, num_layers))
    return json.dumps(data)
