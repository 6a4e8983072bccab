"""The SWAA settings the quality benchmarks compare, and which of them share a prefill.

A setting is named one of three ways:

* a name from ``SETTING_NAMES``: a config built at each window of the sweep (``sw+sink+fa+odd`` at
  W = 2048 is the preset ``balanced``);
* a preset name (``swaa_sglang.config.PRESETS``, e.g. ``half-full-4k``): that config, whatever the
  sweep's window;
* ``NAME=FILE``: a ``--swaa-config`` file (JSON or YAML, e.g. what ``python -m swaa_sglang.calibrate``
  writes), under the name NAME.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from swaa_sglang.config import PRESETS, SWAAConfig, preset_config

from .task import DEFAULT_SINKS


@dataclass(frozen=True)
class Setting:
    """A named SWAA config, with a line that describes it in the report."""

    name: str
    description: str
    config: SWAAConfig

    def placement_window(self, sweep_window: int) -> int:
        """The window a needle's placement is judged against: the config's own where it slides
        (a preset or a file), else the sweep's (full attention: where the needle sits for W)."""
        w = self.config.sliding_window_size
        return w if self.config.enabled and w > 0 else sweep_window


SETTING_NAMES = ("full", "sw", "sw+fa", "sw+sink", "sw+sink+fa", "sw+sink+odd", "sw+sink+fa+odd",
                 "sw+sink+fa+even")
DEFAULT_SETTINGS = SETTING_NAMES[:-1]  # the even-layers twin only where asked for
ALLOWED_SETTINGS = (f"{', '.join(SETTING_NAMES)}; a preset ({', '.join(PRESETS)}); "
                    "or NAME=FILE (a --swaa-config JSON/YAML file)")


def build_settings(window: int, sinks: int = DEFAULT_SINKS, names: Iterable[str] = DEFAULT_SETTINGS) -> list[Setting]:
    """The compared settings at one window (``odd``: layers 1, 3, 5, ... keep full attention;
    ``even``: layers 0, 2, 4, ...); presets and ``NAME=FILE`` settings are the same at every window."""
    table = {
        "full": ("full attention (SWAA off)", SWAAConfig()),
        "sw": (f"window {window}, no sinks", SWAAConfig(sliding_window_size=window)),
        "sw+fa": (
            f"window {window}, no sinks, FA decode",
            SWAAConfig(sliding_window_size=window, force_fa_decode=True),
        ),
        "sw+sink": (f"window {window} + {sinks} sinks", SWAAConfig(sliding_window_size=window, keep_first=sinks)),
        "sw+sink+fa": (
            f"window {window} + {sinks} sinks, FA decode",
            SWAAConfig(sliding_window_size=window, keep_first=sinks, force_fa_decode=True),
        ),
        "sw+sink+odd": (
            f"window {window} + {sinks} sinks, odd layers full, no FA decode",
            SWAAConfig(sliding_window_size=window, keep_first=sinks, non_sliding_layers="odd"),
        ),
        "sw+sink+fa+odd": (
            f"window {window} + {sinks} sinks, FA decode, odd layers full (the paper's balanced recipe)",
            SWAAConfig(sliding_window_size=window, keep_first=sinks, force_fa_decode=True, non_sliding_layers="odd"),
        ),
        "sw+sink+fa+even": (
            f"window {window} + {sinks} sinks, FA decode, even layers full",
            SWAAConfig(sliding_window_size=window, keep_first=sinks, force_fa_decode=True, non_sliding_layers="even"),
        ),
    }
    out = []
    for name in names:
        if name in table:
            out.append(Setting(name, *table[name]))
        elif name in PRESETS:
            out.append(Setting(name, f"preset {name}: {PRESETS[name][0]}", preset_config(name)))
        elif "=" in name:
            label, _, path = name.partition("=")
            if not label or label in table or label in PRESETS:
                raise ValueError(f"settings: {name!r} needs a new NAME before '=' (not empty, not a built-in "
                                 f"setting or preset); allowed: {ALLOWED_SETTINGS}")
            config = SWAAConfig.from_file(path)  # a ValueError naming swaa_config and the file
            out.append(Setting(label, f"{path}: {config.to_json()}", config))
        else:
            raise ValueError(f"settings: unknown setting {name!r}; allowed: {ALLOWED_SETTINGS}")
    return out


def prefill_key(config: SWAAConfig, num_layers: int) -> str:
    """Settings with equal keys run identical prompt prefills (only the decode flag differs)."""
    r = config.resolved(num_layers)
    return json.dumps([r.sliding_window_size, r.keep_first, list(r.non_sliding_layers)])
