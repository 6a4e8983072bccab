"""How a SWAA config travels through SGLang: the ``swaa`` key of ``--json-model-override-args``.

SGLang applies ``json_model_override_args`` to the HF config in every process it
starts (scheduler, TP workers), so one JSON object reaches every worker whichever
way the server was started: ``python -m swaa_sglang.launch_server`` (which writes
it from the ``--swaa-*`` flags), ``python -m sglang.launch_server --attention-backend
swaa --json-model-override-args '{"swaa": {...}}'``, or ``sglang.Engine(...)``.
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any, Optional

from swaa_sglang.config import LAYER_SPEC_HELP, PRESETS, SWAAConfig, preset_config

OVERRIDE_KEY = "swaa"
BACKEND_NAME = "swaa"
EVICTION_CACHE = "swaa"  # --radix-cache-backend of window eviction (registered by swaa_sglang.serving.plugin)

MISSING_CONFIG_HELP = (
    "swaa: the 'swaa' attention backend needs a SWAA config: pass "
    "--json-model-override-args '{\"swaa\": {\"sliding_window_size\": 2048, \"keep_first\": 100}}' "
    "(or {\"swaa\": {\"preset\": \"balanced\"}}; {\"swaa\": {\"sliding_window_size\": null}} for full attention), "
    "or start the server with python -m swaa_sglang.launch_server --swaa-preset NAME"
)


def _load_override(override_json: Optional[str]) -> dict[str, Any]:
    if not override_json:
        return {}
    try:
        data = json.loads(override_json)
    except json.JSONDecodeError as e:
        raise ValueError(f"json_model_override_args: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"json_model_override_args: expected a JSON object; got {override_json!r}")
    return data


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
    return _config_from_data(_load_override(override_json))


def _config_from_data(data: dict[str, Any]) -> Optional[SWAAConfig]:
    if OVERRIDE_KEY not in data:
        return None
    return SWAAConfig.from_dict(data[OVERRIDE_KEY])


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

    ``hybrid_layer_pattern`` needs the layer count; without it only the other two keys are given
    (the plugin's model-config hook completes the pattern in every process).
    """
    if not config.evict_window:
        return {}
    from attention_backends.eviction_policy import sglang_window

    out: dict[str, Any] = {"is_hybrid_swa": True, "sliding_window_size": sglang_window(config.sliding_window_size)}
    if num_layers is not None:
        out["hybrid_layer_pattern"] = hybrid_layer_pattern(config, num_layers)
    return out


def with_config(override_json: Optional[str], config: SWAAConfig, num_layers: Optional[int] = None) -> str:
    """``json_model_override_args`` with the SWAA config set (other keys kept).

    With ``evict_window`` on, also the hybrid-SWA keys of :func:`hybrid_overrides` (the pattern
    only when ``num_layers`` is given; otherwise the plugin's model-config hook adds it).
    """
    data = _load_override(override_json)
    data[OVERRIDE_KEY] = config.to_dict()
    data.update(hybrid_overrides(config, num_layers))
    return json.dumps(data)


def add_swaa_args(parser: argparse.ArgumentParser) -> None:
    presets = "; ".join(f"{name}: {desc}" for name, (desc, _) in PRESETS.items())
    g = parser.add_argument_group(
        "SWAA (sliding window attention adaptation)",
        "Serve a full-attention model with sliding-window attention. A preset or config file "
        "gives the base; the single flags override its fields. A query at position i sees key j "
        "iff j <= i and (i - j < W or j < K) on sliding layers.",
    )
    g.add_argument("--swaa-preset", choices=list(PRESETS), help=f"Start from a preset. {presets}.")
    g.add_argument("--swaa-config", metavar="FILE", help="SWAA config as a JSON or YAML file (fields of SWAAConfig).")
    g.add_argument(
        "--swaa-window", metavar="W",
        help="Sliding window: keys each query sees, itself included (an integer >= 1), or 'none' for full attention.",
    )
    g.add_argument("--swaa-keep-first", metavar="K", help="Sink tokens: the first K tokens stay visible to every query.")
    g.add_argument(
        "--swaa-fa-decode", metavar="on|off|LAYERS",
        help=f"Full-attention decode: generated tokens attend to everything. 'on', 'off', or {LAYER_SPEC_HELP}.",
    )
    g.add_argument(
        "--swaa-full-layers", metavar="LAYERS",
        help=f"Layers that keep full attention everywhere: {LAYER_SPEC_HELP}.",
    )
    g.add_argument(
        "--swaa-evict-window", metavar="on|off",
        help="Window eviction (default off): windowed layers (sliding, no FA decode) keep only the sinks and "
        "the window of KV, in SGLang's hybrid SWA pool, so more requests fit; outputs are unchanged. "
        "Needs W >= 2 and at least one windowed layer; sets --radix-cache-backend swaa.",
    )


def config_from_args(args: argparse.Namespace) -> Optional[SWAAConfig]:
    """The config the ``--swaa-*`` flags describe, or None if none was given."""
    flags = (args.swaa_window, args.swaa_keep_first, args.swaa_fa_decode, args.swaa_full_layers)
    evict = getattr(args, "swaa_evict_window", None)
    if args.swaa_preset is None and args.swaa_config is None and all(f is None for f in (*flags, evict)):
        return None
    if args.swaa_preset and args.swaa_config:
        raise ValueError(
            "swaa_config: give --swaa-preset or --swaa-config, not both (a config file may name a preset: "
            "'preset: balanced')"
        )
    if args.swaa_config:
        base = SWAAConfig.from_file(args.swaa_config)
    else:
        base = preset_config(args.swaa_preset) if args.swaa_preset else SWAAConfig()
    return SWAAConfig.from_cli(*flags, base=base, evict_window=evict)
