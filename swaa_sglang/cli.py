"""The ``--swaa-*`` flags: one vocabulary for every command line that takes a SWAA config.

Used by the server launcher (``python -m swaa_sglang.launch_server``) and by the HF
reference CLIs (``python -m swaa_sglang.hf``, ``launch/examples/hf_reference_eval.py``).
argparse only, no SGLang. A preset or a config file gives the base; each single flag
overrides one field of it (:meth:`SWAAConfig.from_cli` reads the strings).
"""

from __future__ import annotations

import argparse
from typing import Optional

from .config import FA_DECODE_HELP, LAYER_SET_HELP, ON_OFF_HELP, PRESETS, SWAAConfig, preset_config

# The namespace attributes the flags add (a launcher removes them before handing the rest on).
FLAG_DESTS = (
    "swaa_preset", "swaa_config", "swaa_window", "swaa_keep_first", "swaa_fa_decode", "swaa_full_layers",
    "swaa_evict_window",
)


def add_swaa_args(parser: argparse.ArgumentParser, eviction: bool = True) -> None:
    """Add the ``--swaa-*`` flags as one argument group; ``eviction=False`` leaves out
    ``--swaa-evict-window`` (a serving memory knob, meaningless for the HF reference)."""
    presets = "; ".join(f"{name}: {desc}" for name, (desc, _) in PRESETS.items())
    g = parser.add_argument_group(
        "SWAA (sliding window attention adaptation)",
        "Run a full-attention model with sliding-window attention. A preset or config file "
        "gives the base; the single flags override its fields. On a sliding layer a query at "
        "position i sees key j iff j <= i and (i - j < W or j < K).",
    )
    g.add_argument(
        "--swaa-preset", choices=list(PRESETS), metavar="NAME",
        help=f"Start from a setting of the paper: {presets}.",
    )
    g.add_argument(
        "--swaa-config", metavar="FILE",
        help="Start from a JSON or YAML file with the SWAAConfig fields (sliding_window_size, keep_first, "
        "force_fa_decode, non_sliding_layers, evict_window; 'preset: NAME' as a base). Not with --swaa-preset.",
    )
    g.add_argument(
        "--swaa-window", metavar="W",
        help="sliding_window_size: keys each query sees on a sliding layer, itself included (an integer >= 1), "
        "or 'none' (also 'off', 'full') for full attention.",
    )
    g.add_argument(
        "--swaa-keep-first", metavar="K",
        help="keep_first: sink tokens; the first K tokens of a sequence stay visible to every query (default 0).",
    )
    g.add_argument(
        "--swaa-fa-decode", metavar="on|off|LAYERS",
        help="force_fa_decode: generated tokens attend to everything (the window applies to the prompt only). "
        f"{FA_DECODE_HELP}. Default off.",
    )
    g.add_argument(
        "--swaa-full-layers", metavar="LAYERS",
        help=f"non_sliding_layers: layers that keep full attention everywhere; {LAYER_SET_HELP}. Default none.",
    )
    if eviction:
        g.add_argument(
            "--swaa-evict-window", metavar="on|off",
            help=f"evict_window ({ON_OFF_HELP}; default: on when some layer is windowed, i.e. sliding without "
            "FA decode): windowed layers keep only the sinks and the window of KV, in SGLang's hybrid SWA pool, "
            "so more requests fit; full and FA-decode layers keep all their KV; outputs are unchanged. Needs "
            "W >= 2; sets --radix-cache-backend swaa. 'off' keeps all KV on every layer.",
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
