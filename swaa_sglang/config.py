"""SWAA configuration: the four runtime knobs of arXiv:2512.10411, parsed and validated.

Field names follow the paper's code. Layer sets are either explicit id lists or
patterns (``odd``, ``even``, ``every:N[:OFFSET]``) that resolve against a layer
count; a pattern is kept as a pattern until :meth:`SWAAConfig.resolved` is
called, so a config can be written before the model is known.

Every invalid value raises :class:`ValueError` whose message starts with the
field name and says what is allowed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Union

FIELDS = ("sliding_window_size", "keep_first", "force_fa_decode", "non_sliding_layers", "evict_window")

LAYER_SPEC_HELP = (
    "a list of layer ids such as '1,3,5' or '0-3,8', or a pattern: 'odd', 'even', "
    "'every:N' (layers 0, N, 2N, ...) or 'every:N:OFFSET' (OFFSET, OFFSET+N, ...); "
    "'none' or '' for no layers"
)

_EVERY = re.compile(r"^every:(\d+)(?::(\d+))?$")
_RANGE = re.compile(r"^(\d+)-(\d+)$")

LayerSpec = Union[tuple[int, ...], str]


def _layer_ids(name: str, values: Iterable[Any]) -> tuple[int, ...]:
    ids: list[int] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name}: layer ids must be integers >= 0; got {v!r}. Allowed: {LAYER_SPEC_HELP}")
        if v < 0:
            raise ValueError(f"{name}: layer ids must be >= 0; got {v}. Allowed: {LAYER_SPEC_HELP}")
        if v in ids:
            raise ValueError(f"{name}: layer {v} is listed twice; allowed: each layer id once")
        ids.append(v)
    return tuple(sorted(ids))


def parse_layer_spec(name: str, spec: Any) -> LayerSpec:
    """Normalize a layer set: an id tuple, or a canonical pattern string."""
    if isinstance(spec, (list, tuple)):
        return _layer_ids(name, spec)
    if not isinstance(spec, str):
        raise ValueError(f"{name}: expected {LAYER_SPEC_HELP}; got {spec!r}")
    text = spec.strip().lower().replace(" ", "")
    if text in ("", "none", "[]"):
        return ()
    if text in ("odd", "even"):
        return text
    m = _EVERY.match(text)
    if m:
        step, offset = int(m.group(1)), int(m.group(2) or 0)
        if step < 1:
            raise ValueError(f"{name}: 'every:N' needs N >= 1; got {spec!r}. Allowed: {LAYER_SPEC_HELP}")
        return f"every:{step}:{offset}"
    ids: list[int] = []
    for part in text.strip("[]").split(","):
        r = _RANGE.match(part)
        if r:
            lo, hi = int(r.group(1)), int(r.group(2))
            if hi < lo:
                raise ValueError(f"{name}: range {part!r} runs backwards; allowed: LO-HI with LO <= HI")
            ids.extend(range(lo, hi + 1))
        elif part.isdigit():
            ids.append(int(part))
        else:
            raise ValueError(f"{name}: cannot read {part!r} in {spec!r}. Allowed: {LAYER_SPEC_HELP}")
    return _layer_ids(name, ids)


def layer_in(spec: LayerSpec, layer_id: int) -> bool:
    if isinstance(spec, tuple):
        return layer_id in spec
    if spec == "odd":
        return layer_id % 2 == 1
    if spec == "even":
        return layer_id % 2 == 0
    _, step, offset = spec.split(":")
    return layer_id >= int(offset) and (layer_id - int(offset)) % int(step) == 0


def resolve_layers(spec: LayerSpec, num_layers: int) -> list[int]:
    return [i for i in range(num_layers) if layer_in(spec, i)]


def _spec_to_json(spec: LayerSpec) -> list[int] | str:
    return list(spec) if isinstance(spec, tuple) else spec


_TRUE = ("on", "true", "yes", "all")
_FALSE = ("off", "false", "no", "none", "")


@dataclass(frozen=True)
class SWAAConfig:
    """The SWAA knobs. ``sliding_window_size=None`` means plain full attention."""

    sliding_window_size: int | None = None
    keep_first: int = 0
    force_fa_decode: Union[bool, LayerSpec] = False
    non_sliding_layers: LayerSpec = field(default=())
    # Window eviction (attention_backends/EVICTION.md): windowed layers keep only sinks + window
    # of KV in SGLang's hybrid SWA pool. Opt-in; never changes what attention computes.
    evict_window: bool = False

    def __post_init__(self) -> None:
        w = self.sliding_window_size
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ValueError(
                "sliding_window_size: must be an integer >= 1 (keys each query sees, itself included) "
                f"or None for full attention; got {w!r}"
            )
        k = self.keep_first
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"keep_first: must be an integer >= 0 (sink tokens kept visible); got {k!r}")
        fa = self.force_fa_decode
        if not isinstance(fa, bool):
            if fa is None:
                raise ValueError(f"force_fa_decode: must be true, false or {LAYER_SPEC_HELP}; got None")
            object.__setattr__(self, "force_fa_decode", parse_layer_spec("force_fa_decode", fa))
        object.__setattr__(
            self, "non_sliding_layers", parse_layer_spec("non_sliding_layers", self.non_sliding_layers)
        )
        ev = self.evict_window
        if not isinstance(ev, bool):
            raise ValueError(f"evict_window: must be true or false; got {ev!r}")
        if ev and w is None:
            raise ValueError(
                "evict_window: window eviction needs a sliding window (sliding_window_size); "
                "full attention keeps all KV"
            )
        if ev and self.force_fa_decode is True:
            raise ValueError(
                "evict_window: force_fa_decode is on for every layer, so no layer is windowed and there is "
                "no KV to evict; turn FA decode off (or limit it to some layers) or set evict_window off"
            )
        if ev and w < 2:
            raise ValueError(
                f"evict_window: window eviction needs sliding_window_size >= 2 (SGLang's SWA window is W - 1 "
                f"and must be >= 1); got {w}"
            )

    # -- per-layer resolution ------------------------------------------------
    @property
    def enabled(self) -> bool:
        """False when the config is plain full attention everywhere."""
        return self.sliding_window_size is not None

    def is_sliding(self, layer_id: int) -> bool:
        return self.enabled and not layer_in(self.non_sliding_layers, layer_id)

    def uses_fa_decode(self, layer_id: int) -> bool:
        """Whether generated tokens attend to everything on this layer."""
        if not self.is_sliding(layer_id):
            return True  # a full layer decodes with full attention anyway
        fa = self.force_fa_decode
        return fa if isinstance(fa, bool) else layer_in(fa, layer_id)

    def windowed_decode(self, layer_id: int) -> bool:
        """Sliding layer whose decode sees only sinks + window (its older KV is droppable)."""
        return self.is_sliding(layer_id) and not self.uses_fa_decode(layer_id)

    def windowed_layers(self, num_layers: int) -> list[int]:
        """Layers whose KV outside sinks + window may be evicted (:meth:`windowed_decode`)."""
        return [i for i in range(num_layers) if self.windowed_decode(i)]

    # -- validation ----------------------------------------------------------
    def validate(self, num_layers: int, context_length: int | None = None) -> "SWAAConfig":
        """Check layer ids against the model; returns self for chaining."""
        for name in ("non_sliding_layers", "force_fa_decode"):
            spec = getattr(self, name)
            if isinstance(spec, tuple):
                bad = [i for i in spec if i >= num_layers]
                if bad:
                    raise ValueError(
                        f"{name}: layer ids {bad} are out of range; this model has {num_layers} layers "
                        f"(allowed ids 0..{num_layers - 1})"
                    )
            elif isinstance(spec, str) and spec.startswith("every:") and int(spec.split(":")[2]) >= num_layers:
                raise ValueError(
                    f"{name}: pattern '{spec}' starts at layer {spec.split(':')[2]}, past the last layer; this model "
                    f"has {num_layers} layers (allowed offsets 0..{num_layers - 1})"
                )
        fa = self.force_fa_decode
        if isinstance(fa, tuple):
            full = [i for i in fa if layer_in(self.non_sliding_layers, i)]
            if full:
                raise ValueError(
                    f"force_fa_decode: layers {full} are in non_sliding_layers (full attention already); "
                    "allowed: sliding layers only (ids not in non_sliding_layers), or true/false"
                )
        if self.evict_window and not self.windowed_layers(num_layers):
            raise ValueError(
                "evict_window: no layer is windowed (every layer is full or decodes with full attention), "
                "so there is no KV to evict; turn FA decode off on some sliding layer or set evict_window off"
            )
        if context_length is not None and self.keep_first > context_length:
            raise ValueError(
                f"keep_first: {self.keep_first} sink tokens exceed the context length {context_length}; "
                f"allowed 0..{context_length}"
            )
        return self

    def resolved(self, num_layers: int) -> "SWAAConfig":
        """Same config with patterns expanded into explicit layer lists."""
        self.validate(num_layers)
        fa = self.force_fa_decode
        return SWAAConfig(
            sliding_window_size=self.sliding_window_size,
            keep_first=self.keep_first,
            force_fa_decode=fa if isinstance(fa, bool) else resolve_layers(fa, num_layers),
            non_sliding_layers=resolve_layers(self.non_sliding_layers, num_layers),
            evict_window=self.evict_window,
        )

    # -- (de)serialization ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON; ``evict_window`` only when on (the four paper knobs otherwise)."""
        fa = self.force_fa_decode
        out = {
            "sliding_window_size": self.sliding_window_size,
            "keep_first": self.keep_first,
            "force_fa_decode": fa if isinstance(fa, bool) else _spec_to_json(fa),
            "non_sliding_layers": _spec_to_json(self.non_sliding_layers),
        }
        if self.evict_window:
            out["evict_window"] = True
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SWAAConfig":
        if not isinstance(data, Mapping):
            raise ValueError(f"SWAA config: expected a mapping with fields {', '.join(FIELDS)}; got {data!r}")
        data = dict(data)
        preset = data.pop("preset", None)
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown SWAA field; allowed fields: {', '.join(FIELDS)} (and 'preset')")
        base = preset_config(preset).to_dict() if preset is not None else {}
        base.update(data)
        return cls(**base)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> "SWAAConfig":
        """From a JSON string, or the path of a JSON file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"SWAA config: invalid JSON ({e})") from None
        return cls.from_dict(data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "SWAAConfig":
        """From a YAML file; the SWAA fields may sit at the top or under a ``swaa`` key."""
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if isinstance(data, Mapping) and "swaa" in data:
            data = data["swaa"]
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SWAAConfig":
        """From a ``.yaml``/``.yml`` or JSON file; a file that cannot be read or parsed is a
        ValueError naming ``swaa_config`` (the launcher turns those into a one-line error)."""
        import yaml

        p = str(path)
        try:
            return cls.from_yaml(p) if p.endswith((".yaml", ".yml")) else cls.from_json(p)
        except OSError as e:
            raise ValueError(f"swaa_config: cannot read {p!r} ({e.strerror or e}); allowed: a readable JSON "
                             "or YAML file (.yaml/.yml) with the SWAA fields") from None
        except yaml.YAMLError as e:
            raise ValueError(f"swaa_config: {p!r} is not valid YAML ({e}); allowed: a JSON or YAML file "
                             "with the SWAA fields") from None

    @classmethod
    def from_cli(
        cls,
        window: str | int | None = None,
        keep_first: str | int | None = None,
        fa_decode: str | bool | None = None,
        full_layers: str | None = None,
        base: "SWAAConfig | None" = None,
        evict_window: str | bool | None = None,
    ) -> "SWAAConfig":
        """From CLI-style strings; unset arguments keep ``base`` (or the defaults)."""
        fields = (base or cls()).to_dict()
        if window is not None:
            fields["sliding_window_size"] = _parse_window(window)
        if keep_first is not None:
            fields["keep_first"] = _parse_int("keep_first", keep_first)
        if fa_decode is not None:
            fields["force_fa_decode"] = _parse_fa_decode(fa_decode)
        if full_layers is not None:
            fields["non_sliding_layers"] = full_layers
        if evict_window is not None:
            fields["evict_window"] = _parse_on_off("evict_window", evict_window)
        return cls(**fields)


def _parse_int(name: str, value: str | int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name}: expected an integer; got {value!r}") from None


def _parse_on_off(name: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"{name}: expected on or off; got {value!r}")


def _parse_window(value: str | int) -> int | None:
    if isinstance(value, str) and value.strip().lower() in ("none", "off", "full"):
        return None
    return _parse_int("sliding_window_size", value)


def _parse_fa_decode(value: str | bool) -> Union[bool, LayerSpec]:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return parse_layer_spec("force_fa_decode", text)


# -- presets: the settings the paper tested ------------------------------------
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full attention everywhere (SWAA off)", {}),
    "window-2k": ("window 2048, no sinks", {"sliding_window_size": 2048}),
    "window-4k": ("window 4096, no sinks", {"sliding_window_size": 4096}),
    "sink10-2k": ("window 2048 + 10 sinks", {"sliding_window_size": 2048, "keep_first": 10}),
    "sink100-2k": ("window 2048 + 100 sinks", {"sliding_window_size": 2048, "keep_first": 100}),
    "sink100-4k": ("window 4096 + 100 sinks", {"sliding_window_size": 4096, "keep_first": 100}),
    "fa-decode-2k": (
        "window 2048 + 100 sinks, full-attention decode",
        {"sliding_window_size": 2048, "keep_first": 100, "force_fa_decode": True},
    ),
    "balanced": (
        "window 2048 + 100 sinks, full-attention decode, odd layers full (half)",
        {"sliding_window_size": 2048, "keep_first": 100, "force_fa_decode": True, "non_sliding_layers": "odd"},
    ),
    "quarter-full-2k": (
        "window 2048 + 100 sinks, full-attention decode, every 4th layer full (a quarter)",
        {
            "sliding_window_size": 2048,
            "keep_first": 100,
            "force_fa_decode": True,
            "non_sliding_layers": "every:4:3",
        },
    ),
    "half-full-4k": (
        "window 4096 + 100 sinks, full-attention decode, odd layers full (half)",
        {"sliding_window_size": 4096, "keep_first": 100, "force_fa_decode": True, "non_sliding_layers": "odd"},
    ),
}


def preset_config(name: str) -> SWAAConfig:
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return SWAAConfig(**PRESETS[name][1])
