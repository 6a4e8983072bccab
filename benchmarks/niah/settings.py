"""The SWAA settings the quality benchmark compares at one window, and which of them share a prefill."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from swaa_sglang.config import SWAAConfig

from .task import DEFAULT_SINKS


@dataclass(frozen=True)
class Setting:
    """A named SWAA config, with a line that describes it in the report."""

    name: str
    description: str
    config: SWAAConfig


SETTING_NAMES = ("full", "sw", "sw+fa", "sw+sink", "sw+sink+fa", "sw+sink+odd", "sw+sink+fa+odd")


def build_settings(window: int, sinks: int = DEFAULT_SINKS, names: Iterable[str] = SETTING_NAMES) -> list[Setting]:
    """The compared settings at one window (``odd``: layers 1, 3, 5, ... keep full attention)."""
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
    }
    out = []
    for name in names:
        if name not in table:
            raise ValueError(f"settings: unknown setting {name!r}; allowed: {', '.join(SETTING_NAMES)}")
        out.append(Setting(name, *table[name]))
    return out


def prefill_key(config: SWAAConfig, num_layers: int) -> str:
    """Settings with equal keys run identical prompt prefills (only the decode flag differs)."""
    r = config.resolved(num_layers)
    return json.dumps([r.sliding_window_size, r.keep_first, list(r.non_sliding_layers)])
