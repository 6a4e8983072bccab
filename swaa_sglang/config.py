"""SWAA configuration: the four runtime knobs of arXiv:2512.10411, parsed and validated.

Field names follow the paper's code. Layer sets are parsed once into a :class:`LayerSet`:
explicit ids, or a pattern (``odd``, ``even``, ``every:N[:OFFSET]``) that stays a pattern
until :meth:`SWAAConfig.resolved` expands it, so a config can be written before the model
is known. CLI-style strings (``on``/``off``, ``none``, ...) are read by one set of parsers
here; the ``--swaa-*`` flags that use them are in :mod:`swaa_sglang.cli`.

Every invalid value raises :class:`ValueError` whose message starts with the field name and
says what is allowed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping, Union

FIELDS = ("sliding_window_size", "keep_first", "force_fa_decode", "non_sliding_layers", "evict_window")

LAYER_SET_HELP = (
    "a list of layer ids such as '1,3,5' or '0-3,8', or a pattern: 'odd', 'even', "
    "'every:N' (layers 0, N, 2N, ...) or 'every:N:OFFSET' (OFFSET, OFFSET+N, ...); "
    "'none' or '' for no layers"
)

_EVERY = re.compile(r"^every:(\d+)(?::(\d+))?$")
_RANGE = re.compile(r"^(\d+)-(\d+)$")


# -- layer sets ------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSet:
    """A set of layer ids, parsed once (build it with :meth:`parse`).

    Either explicit ``ids`` (sorted, each once; ``step == 0``) or a pattern: the layers
    ``offset, offset + step, offset + 2 * step, ...`` (``odd`` is step 2 from 1, ``even``
    step 2 from 0). ``name`` keeps a pattern's JSON spelling ('odd', 'even' or
    'every:N:OFFSET'), so a pattern round-trips through :meth:`to_json` as written.
    """

    ids: tuple[int, ...] = ()
    step: int = 0  # 0: the set is ``ids``; >= 1: a pattern
    offset: int = 0
    name: str = ""

    @classmethod
    def parse(cls, field_name: str, spec: Any) -> "LayerSet":
        """From a LayerSet, a list of ids, or a string (:data:`LAYER_SET_HELP`); errors name ``field_name``."""
        if isinstance(spec, LayerSet):
            return spec
        if isinstance(spec, (list, tuple)):
            return cls(ids=_layer_ids(field_name, spec))
        if not isinstance(spec, str):
            raise ValueError(f"{field_name}: expected {LAYER_SET_HELP}; got {spec!r}")
        text = spec.strip().lower().replace(" ", "")
        if text in ("", "none", "[]"):
            return cls()
        if text == "odd":
            return cls(step=2, offset=1, name="odd")
        if text == "even":
            return cls(step=2, offset=0, name="even")
        m = _EVERY.match(text)
        if m:
            step, offset = int(m.group(1)), int(m.group(2) or 0)
            if step < 1:
                raise ValueError(f"{field_name}: 'every:N' needs N >= 1; got {spec!r}. Allowed: {LAYER_SET_HELP}")
            return cls(step=step, offset=offset, name=f"every:{step}:{offset}")
        ids: list[int] = []
        for part in text.strip("[]").split(","):
            r = _RANGE.match(part)
            if r:
                lo, hi = int(r.group(1)), int(r.group(2))
                if hi < lo:
                    raise ValueError(f"{field_name}: range {part!r} runs backwards; allowed: LO-HI with LO <= HI")
                ids.extend(range(lo, hi + 1))
            elif part.isdigit():
                ids.append(int(part))
            else:
                raise ValueError(f"{field_name}: cannot read {part!r} in {spec!r}. Allowed: {LAYER_SET_HELP}")
        return cls(ids=_layer_ids(field_name, ids))

    @property
    def is_pattern(self) -> bool:
        return self.step > 0

    def contains(self, layer_id: int) -> bool:
        if self.is_pattern:
            return layer_id >= self.offset and (layer_id - self.offset) % self.step == 0
        return layer_id in self.ids

    __contains__ = contains

    def resolve(self, num_layers: int) -> list[int]:
        """The ids among ``0 .. num_layers - 1``, ascending."""
        return [i for i in range(num_layers) if self.contains(i)]

    def to_json(self) -> list[int] | str:
        """A pattern's spelling, or the list of ids (what :meth:`parse` reads back)."""
        return self.name if self.is_pattern else list(self.ids)

    def check_fits(self, field_name: str, num_layers: int) -> None:
        """Refuse ids past the model's last layer, and an ``every:N:OFFSET`` starting past it.

        ``odd`` and ``even`` fit any model (on a one-layer model ``odd`` is simply empty).
        """
        if not self.is_pattern:
            bad = [i for i in self.ids if i >= num_layers]
            if bad:
                raise ValueError(
                    f"{field_name}: layer ids {bad} are out of range; this model has {num_layers} layers "
                    f"(allowed ids 0..{num_layers - 1})"
                )
        elif self.name.startswith("every:") and self.offset >= num_layers:
            raise ValueError(
                f"{field_name}: pattern '{self.name}' starts at layer {self.offset}, past the last layer; this model "
                f"has {num_layers} layers (allowed offsets 0..{num_layers - 1})"
            )

    def __bool__(self) -> bool:
        """Whether the set names any layer (a pattern always does, on a model deep enough)."""
        return self.is_pattern or bool(self.ids)

    def __iter__(self) -> Iterator[int]:
        """The explicit ids; a pattern has no end of its own: list it with :meth:`resolve`."""
        if self.is_pattern:
            raise TypeError(f"layer set '{self.name}' is a pattern; list its layers with resolve(num_layers)")
        return iter(self.ids)

    def __str__(self) -> str:
        return self.name if self.is_pattern else ",".join(map(str, self.ids)) or "none"

    def compact(self) -> str:
        """Runs of ids as ranges ('0-34,36'), in the syntax :meth:`parse` reads; a pattern's name."""
        if self.is_pattern:
            return self.name
        runs: list[list[int]] = []
        for i in self.ids:
            if runs and i == runs[-1][1] + 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        return ",".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in runs) or "none"

    def __repr__(self) -> str:
        return f"LayerSet({self.to_json()!r})"


def _layer_ids(field_name: str, values: Iterable[Any]) -> tuple[int, ...]:
    ids: list[int] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{field_name}: layer ids must be integers >= 0; got {v!r}. Allowed: {LAYER_SET_HELP}")
        if v < 0:
            raise ValueError(f"{field_name}: layer ids must be >= 0; got {v}. Allowed: {LAYER_SET_HELP}")
        if v in ids:
            raise ValueError(f"{field_name}: layer {v} is listed twice; allowed: each layer id once")
        ids.append(v)
    return tuple(sorted(ids))


# -- CLI-style strings: one vocabulary for on/off ---------------------------------------
ON_WORDS = ("on", "true", "yes")
OFF_WORDS = ("off", "false", "no")
ON_OFF_HELP = f"{'/'.join(ON_WORDS)} or {'/'.join(OFF_WORDS)}"


def parse_on_off(field_name: str, value: str | bool) -> bool:
    """A switch given as a bool or a word of :data:`ON_WORDS` / :data:`OFF_WORDS` (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ON_WORDS:
        return True
    if text in OFF_WORDS:
        return False
    raise ValueError(f"{field_name}: expected on or off; got {value!r}. Allowed: {ON_OFF_HELP}")


def parse_int(field_name: str, value: str | int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{field_name}: expected an integer; got {value!r}") from None


FULL_WINDOW_WORDS = ("none", "off", "full")


def parse_window(value: str | int) -> int | None:
    """``sliding_window_size`` from a string: an integer, or one of :data:`FULL_WINDOW_WORDS` (None)."""
    if isinstance(value, str) and value.strip().lower() in FULL_WINDOW_WORDS:
        return None
    return parse_int("sliding_window_size", value)


FA_DECODE_HELP = f"{ON_OFF_HELP} ('all' = on), or the layers where it applies: {LAYER_SET_HELP}"


def parse_fa_decode(value: str | bool) -> Union[bool, LayerSet]:
    """``force_fa_decode`` from a string (:data:`FA_DECODE_HELP`); a bare number is a layer id."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ON_WORDS or text == "all":
        return True
    if text in OFF_WORDS or text in ("none", ""):
        return False
    return LayerSet.parse("force_fa_decode", text)


# -- the config ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SWAAConfig:
    """The SWAA knobs. ``sliding_window_size=None`` means plain full attention.

    ``force_fa_decode`` and ``non_sliding_layers`` accept lists, strings and LayerSets and
    are held as :class:`LayerSet` (``force_fa_decode`` may also be a bool: every sliding layer).
    """

    sliding_window_size: int | None = None
    keep_first: int = 0
    force_fa_decode: Union[bool, LayerSet] = False
    non_sliding_layers: LayerSet = field(default=LayerSet())
    # Window eviction (docs/design/eviction.md): windowed layers keep only sinks + window of KV
    # in SGLang's hybrid SWA pool; it never changes what attention computes. None (the default)
    # means on exactly when some layer is windowed, decided once the layer count is known
    # (:meth:`with_eviction_resolved`); True / False are the user's explicit choice.
    evict_window: bool | None = None

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
                raise ValueError(f"force_fa_decode: must be true, false or {LAYER_SET_HELP}; got None")
            object.__setattr__(self, "force_fa_decode", LayerSet.parse("force_fa_decode", fa))
        object.__setattr__(
            self, "non_sliding_layers", LayerSet.parse("non_sliding_layers", self.non_sliding_layers)
        )
        ev = self.evict_window
        if ev is not None and not isinstance(ev, bool):
            raise ValueError(f"evict_window: must be true, false or unset (on where a layer is windowed); got {ev!r}")
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
        # W = 1 would give SGLang's SWA radix cache a window of 0: it then takes no SWA lock,
        # but its dec_lock_ref still unlocks up to the root.
        if ev and w < 2:
            raise ValueError(
                f"evict_window: window eviction needs sliding_window_size >= 2 (SGLang's SWA window is W - 1 "
                f"and must be >= 1); got {w}. It is on by default where a layer is windowed: set evict_window "
                "false (--swaa-evict-window off) to serve W = 1"
            )

    def with_eviction_resolved(self, num_layers: int) -> "SWAAConfig":
        """This config with ``evict_window`` decided: the explicit choice, else on exactly when some
        layer of a ``num_layers``-layer model is windowed (full and FA-decode layers beside them keep
        all their KV in the full pool). Raises ValueError where the default would turn eviction on for
        a window it cannot serve (W = 1)."""
        if self.evict_window is not None:
            return self
        return replace(self, evict_window=bool(self.windowed_layers(num_layers)))

    # -- the window in FlashInfer's and SGLang's terms ----------------------------------
    @property
    def sglang_window(self) -> int:
        """``W - 1``, or -1 for full attention: the window without the query itself.

        SWAA's W counts the query; FlashInfer's ``window_left`` (keys ``j >= i - window_left``),
        SGLang's ``RadixAttention.sliding_window_size`` and the ``sliding_window_size`` of its
        hybrid SWA pool and radix cache do not. Both use -1 for "no window". Window eviction
        refuses W < 2 (see :meth:`__post_init__`), so with ``evict_window`` on this is >= 1.
        """
        w = self.sliding_window_size
        return -1 if w is None else w - 1

    # -- per-layer resolution ------------------------------------------------
    @property
    def enabled(self) -> bool:
        """False when the config is plain full attention everywhere."""
        return self.sliding_window_size is not None

    def is_sliding(self, layer_id: int) -> bool:
        return self.enabled and not self.non_sliding_layers.contains(layer_id)

    def uses_fa_decode(self, layer_id: int) -> bool:
        """Whether generated tokens attend to everything on this layer."""
        if not self.is_sliding(layer_id):
            return True  # a full layer decodes with full attention anyway
        fa = self.force_fa_decode
        return fa if isinstance(fa, bool) else fa.contains(layer_id)

    def windowed_decode(self, layer_id: int) -> bool:
        """Sliding layer whose decode sees only sinks + window (its older KV is droppable)."""
        return self.is_sliding(layer_id) and not self.uses_fa_decode(layer_id)

    def windowed_layers(self, num_layers: int) -> list[int]:
        """Layers whose KV outside sinks + window may be evicted (:meth:`windowed_decode`)."""
        return [i for i in range(num_layers) if self.windowed_decode(i)]

    # -- validation ----------------------------------------------------------
    def validate(self, num_layers: int, context_length: int | None = None) -> "SWAAConfig":
        """Check layer ids against the model; returns self for chaining."""
        self.non_sliding_layers.check_fits("non_sliding_layers", num_layers)
        fa = self.force_fa_decode
        if isinstance(fa, LayerSet):
            fa.check_fits("force_fa_decode", num_layers)
            if not fa.is_pattern:
                full = [i for i in fa.ids if self.non_sliding_layers.contains(i)]
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
            force_fa_decode=fa if isinstance(fa, bool) else fa.resolve(num_layers),
            non_sliding_layers=self.non_sliding_layers.resolve(num_layers),
            evict_window=self.evict_window,
        )

    # -- (de)serialization ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON; ``evict_window`` only when set (true or false; unset is the default)."""
        fa = self.force_fa_decode
        out = {
            "sliding_window_size": self.sliding_window_size,
            "keep_first": self.keep_first,
            "force_fa_decode": fa if isinstance(fa, bool) else fa.to_json(),
            "non_sliding_layers": self.non_sliding_layers.to_json(),
        }
        if self.evict_window is not None:
            out["evict_window"] = self.evict_window
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
        """From CLI-style strings (:func:`parse_window`, :func:`parse_fa_decode`, :func:`parse_on_off`);
        unset arguments keep ``base`` (or the defaults)."""
        fields = (base or cls()).to_dict()
        if window is not None:
            fields["sliding_window_size"] = parse_window(window)
        if keep_first is not None:
            fields["keep_first"] = parse_int("keep_first", keep_first)
        if fa_decode is not None:
            fields["force_fa_decode"] = parse_fa_decode(fa_decode)
        if full_layers is not None:
            fields["non_sliding_layers"] = full_layers
        if evict_window is not None:
            fields["evict_window"] = parse_on_off("evict_window", evict_window)
        return cls(**fields)


def layer_ranges(ids: list[int]) -> str:
    """Layer ids as ranges, for messages: [0, 1, 2, 5] -> '0-2,5'; [] -> 'none'."""
    out, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(out) or "none"


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
