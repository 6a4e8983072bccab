"""SWAAConfig: every field, every parse path, every invalid case with its message; LayerSet, the on/off
vocabulary and the --swaa-* flags (swaa_sglang.cli)."""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import pytest
import yaml

from attention_backends.eviction_policy import sglang_window
from swaa_sglang.cli import FLAG_DESTS, add_swaa_args, config_from_args
from swaa_sglang.config import (
    OFF_WORDS,
    ON_WORDS,
    PRESETS,
    LayerSet,
    SWAAConfig,
    parse_fa_decode,
    parse_on_off,
    preset_config,
)


def test_defaults_are_full_attention():
    c = SWAAConfig()
    assert not c.enabled
    assert [c.is_sliding(i) for i in range(4)] == [False] * 4
    assert all(c.uses_fa_decode(i) for i in range(4))
    assert not any(c.windowed_decode(i) for i in range(4))


def test_per_layer_resolution():
    c = SWAAConfig(sliding_window_size=8, keep_first=2, force_fa_decode=[0, 2], non_sliding_layers=[1, 3])
    assert [c.is_sliding(i) for i in range(5)] == [True, False, True, False, True]
    assert [c.uses_fa_decode(i) for i in range(5)] == [True, True, True, True, False]
    assert [c.windowed_decode(i) for i in range(5)] == [False, False, False, False, True]


def test_fa_decode_bool_applies_to_all_sliding_layers():
    on = SWAAConfig(sliding_window_size=8, force_fa_decode=True)
    off = SWAAConfig(sliding_window_size=8, force_fa_decode=False)
    assert all(on.uses_fa_decode(i) for i in range(6))
    assert not any(off.uses_fa_decode(i) for i in range(6))
    assert all(off.windowed_decode(i) for i in range(6))


@pytest.mark.parametrize(
    "spec, n, expected",
    [
        ("1,3,5", 8, [1, 3, 5]),
        ("5, 1 ,3", 8, [1, 3, 5]),
        ("0-3,8", 10, [0, 1, 2, 3, 8]),
        ("[2,4]", 6, [2, 4]),
        ("odd", 7, [1, 3, 5]),
        ("even", 7, [0, 2, 4, 6]),
        ("EVERY:3", 10, [0, 3, 6, 9]),
        ("every:4:3", 12, [3, 7, 11]),
        ("every:1", 3, [0, 1, 2]),
        ("none", 5, []),
        ("", 5, []),
        ([4, 0], 5, [0, 4]),
    ],
)
def test_layer_specs(spec, n, expected):
    assert LayerSet.parse("non_sliding_layers", spec).resolve(n) == expected
    c = SWAAConfig(sliding_window_size=4, non_sliding_layers=spec)
    assert [i for i in range(n) if not c.is_sliding(i)] == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sliding_window_size": 0}, "sliding_window_size: must be an integer >= 1"),
        ({"sliding_window_size": -5}, "sliding_window_size: must be an integer >= 1"),
        ({"sliding_window_size": 2.5}, "sliding_window_size: must be an integer >= 1"),
        ({"sliding_window_size": True}, "sliding_window_size: must be an integer >= 1"),
        ({"sliding_window_size": "2048"}, "sliding_window_size: must be an integer >= 1"),
        ({"keep_first": -1}, "keep_first: must be an integer >= 0"),
        ({"keep_first": 1.0}, "keep_first: must be an integer >= 0"),
        ({"keep_first": None}, "keep_first: must be an integer >= 0"),
        ({"force_fa_decode": None}, "force_fa_decode: must be true, false or"),
        ({"force_fa_decode": [1, 1]}, "force_fa_decode: layer 1 is listed twice"),
        ({"force_fa_decode": "maybe"}, "force_fa_decode: cannot read 'maybe'"),
        ({"non_sliding_layers": [1, 2, 1]}, "non_sliding_layers: layer 1 is listed twice"),
        ({"non_sliding_layers": "1,1"}, "non_sliding_layers: layer 1 is listed twice"),
        ({"non_sliding_layers": [-1]}, "non_sliding_layers: layer ids must be >= 0"),
        ({"non_sliding_layers": ["a"]}, "non_sliding_layers: layer ids must be integers"),
        ({"non_sliding_layers": [True]}, "non_sliding_layers: layer ids must be integers"),
        ({"non_sliding_layers": "3-1"}, "non_sliding_layers: range '3-1' runs backwards"),
        ({"non_sliding_layers": "every:0"}, "non_sliding_layers: 'every:N' needs N >= 1"),
        ({"non_sliding_layers": "prime"}, "non_sliding_layers: cannot read 'prime'"),
        ({"non_sliding_layers": 3}, "non_sliding_layers: expected a list of layer ids"),
    ],
)
def test_invalid_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError) as e:
        SWAAConfig(**{"sliding_window_size": 8, **kwargs})
    assert str(e.value).startswith(message), str(e.value)


def test_validate_against_model():
    c = SWAAConfig(sliding_window_size=8, non_sliding_layers=[1, 30])
    with pytest.raises(ValueError, match=r"non_sliding_layers: layer ids \[30\] are out of range; this model has 30"):
        c.validate(30)
    assert c.validate(31) is c
    with pytest.raises(ValueError, match=r"force_fa_decode: layer ids \[4\] are out of range"):
        SWAAConfig(sliding_window_size=8, force_fa_decode=[4]).validate(4)
    with pytest.raises(ValueError, match=r"force_fa_decode: layers \[1\] are in non_sliding_layers"):
        SWAAConfig(sliding_window_size=8, force_fa_decode=[0, 1], non_sliding_layers="odd").validate(4)
    with pytest.raises(ValueError, match=r"keep_first: 100 sink tokens exceed the context length 64"):
        SWAAConfig(sliding_window_size=8, keep_first=100).validate(4, context_length=64)


def test_resolved_expands_patterns_and_round_trips():
    c = SWAAConfig(sliding_window_size=16, keep_first=4, force_fa_decode="every:4", non_sliding_layers="odd")
    r = c.resolved(8)
    assert r.to_dict() == {
        "sliding_window_size": 16,
        "keep_first": 4,
        "force_fa_decode": [0, 4],
        "non_sliding_layers": [1, 3, 5, 7],
    }
    for layer in range(8):
        assert r.is_sliding(layer) == c.is_sliding(layer)
        assert r.uses_fa_decode(layer) == c.uses_fa_decode(layer)


def test_dict_and_json_round_trip(tmp_path):
    c = SWAAConfig(sliding_window_size=2048, keep_first=100, force_fa_decode=True, non_sliding_layers="odd")
    assert SWAAConfig.from_dict(c.to_dict()) == c
    assert SWAAConfig.from_json(c.to_json()) == c
    p = tmp_path / "swaa.json"
    p.write_text(json.dumps(c.to_dict()))
    assert SWAAConfig.from_json(p) == c
    assert SWAAConfig.from_file(p) == c


def test_yaml_file_top_level_or_nested(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("sliding_window_size: 512\nkeep_first: 10\nnon_sliding_layers: [0, 2]\n")
    nested = tmp_path / "nested.yml"
    nested.write_text("model_path: x\nswaa:\n  preset: balanced\n  keep_first: 10\n")
    assert SWAAConfig.from_yaml(flat) == SWAAConfig(sliding_window_size=512, keep_first=10, non_sliding_layers=[0, 2])
    n = SWAAConfig.from_file(nested)
    assert n.keep_first == 10 and n.sliding_window_size == 2048 and n.non_sliding_layers == LayerSet.parse("x", "odd")


def test_dict_errors():
    with pytest.raises(ValueError, match=r"^window: unknown SWAA field; allowed fields: sliding_window_size"):
        SWAAConfig.from_dict({"window": 4})
    with pytest.raises(ValueError, match=r"^SWAA config: expected a mapping"):
        SWAAConfig.from_dict([4])
    with pytest.raises(ValueError, match=r"^SWAA config: invalid JSON"):
        SWAAConfig.from_json("{not json")
    with pytest.raises(ValueError, match=r"^preset: unknown preset 'nope'; allowed: full, window-2k"):
        SWAAConfig.from_dict({"preset": "nope"})


def test_cli_strings():
    assert SWAAConfig.from_cli("1024", "10", "on", "odd") == SWAAConfig(1024, 10, True, "odd")
    assert SWAAConfig.from_cli("1024", fa_decode="off").force_fa_decode is False
    assert SWAAConfig.from_cli("1024", fa_decode="1,3").force_fa_decode == LayerSet(ids=(1, 3))
    assert SWAAConfig.from_cli("none").enabled is False
    base = preset_config("balanced")
    over = SWAAConfig.from_cli(keep_first="4", base=base)
    assert over.keep_first == 4 and over.sliding_window_size == 2048 and over.force_fa_decode is True
    with pytest.raises(ValueError, match=r"^sliding_window_size: expected an integer; got 'big'"):
        SWAAConfig.from_cli("big")
    with pytest.raises(ValueError, match=r"^keep_first: expected an integer"):
        SWAAConfig.from_cli("16", keep_first="x")
    with pytest.raises(ValueError, match=r"^sliding_window_size: must be an integer >= 1"):
        SWAAConfig.from_cli("0")


def test_presets_are_valid_and_documented():
    assert "balanced" in PRESETS
    b = preset_config("balanced")
    assert (b.sliding_window_size, b.keep_first, b.force_fa_decode) == (2048, 100, True)
    assert [i for i in range(6) if not b.is_sliding(i)] == [1, 3, 5]
    for name, (description, fields) in PRESETS.items():
        assert description
        preset_config(name).validate(36)
    with pytest.raises(ValueError, match="preset: unknown preset"):
        preset_config("fast")


# -- LayerSet ------------------------------------------------------------------------------
NUM_LAYERS = 64


def _brute_force_sets() -> list[tuple[object, set[int]]]:
    """(spec, the layers it names among 0..63), each set written out independently of LayerSet."""
    layers = range(NUM_LAYERS)
    cases: list[tuple[object, set[int]]] = [
        ("odd", {i for i in layers if i % 2 == 1}),
        ("Even", {i for i in layers if i % 2 == 0}),
        ("none", set()),
        ("", set()),
        ("[]", set()),
        ([], set()),
    ]
    for step in range(1, 11):
        cases.append((f"every:{step}", set(range(0, NUM_LAYERS, step))))
        for offset in range(0, 13):
            cases.append((f"every:{step}:{offset}", set(range(offset, NUM_LAYERS, step))))
    rng = random.Random(19)
    for _ in range(60):
        ids = set(rng.sample(range(NUM_LAYERS), rng.randint(1, 20)))
        cases.append((sorted(ids, reverse=True), ids))  # a list, any order
        runs, start = [], None  # the same set as a string of ids and LO-HI ranges
        for i in range(NUM_LAYERS + 1):
            if i in ids and start is None:
                start = i
            elif i not in ids and start is not None:
                runs.append(str(start) if i - 1 == start else f"{start}-{i - 1}")
                start = None
        rng.shuffle(runs)
        cases.append((", ".join(runs), ids))
    return cases


@pytest.mark.parametrize("spec, expected", _brute_force_sets())
def test_layer_set_membership_matches_brute_force(spec, expected):
    layer_set = LayerSet.parse("non_sliding_layers", spec)
    for layer in range(NUM_LAYERS):
        assert layer_set.contains(layer) == (layer in expected), (spec, layer)
        assert (layer in layer_set) == (layer in expected)
    assert layer_set.resolve(NUM_LAYERS) == sorted(expected)
    assert bool(layer_set) == (layer_set.is_pattern or bool(expected))
    # parsed once, read back the same from its JSON form, and inside a config
    assert LayerSet.parse("non_sliding_layers", json.loads(json.dumps(layer_set.to_json()))) == layer_set
    c = SWAAConfig(sliding_window_size=8, non_sliding_layers=spec)
    assert c.non_sliding_layers == layer_set
    assert [i for i in range(NUM_LAYERS) if not c.is_sliding(i)] == sorted(expected)
    assert SWAAConfig.from_json(c.to_json()) == c
    assert c.resolved(NUM_LAYERS).non_sliding_layers == LayerSet(ids=tuple(sorted(expected)))


@pytest.mark.parametrize(
    "spec, json_form",
    [
        ("odd", "odd"),
        ("EVEN", "even"),
        ("every:4", "every:4:0"),
        ("every: 4 : 3", "every:4:3"),
        ("5,1", [1, 5]),
        ("0-2,7", [0, 1, 2, 7]),
        ("[2,4]", [2, 4]),
        ([3, 0], [0, 3]),
        ("none", []),
        ("", []),
    ],
)
def test_layer_set_json_spelling(spec, json_form):
    """The JSON form is what configs and launch/*.yaml recipes have always carried."""
    assert LayerSet.parse("non_sliding_layers", spec).to_json() == json_form
    assert SWAAConfig(8, non_sliding_layers=spec).to_dict()["non_sliding_layers"] == json_form
    assert SWAAConfig(8, force_fa_decode=spec).to_dict()["force_fa_decode"] == json_form


def test_layer_set_iteration_needs_a_layer_count():
    assert list(LayerSet.parse("x", "3,1")) == [1, 3]
    with pytest.raises(TypeError, match="layer set 'odd' is a pattern; list its layers with resolve"):
        list(LayerSet.parse("x", "odd"))
    assert repr(LayerSet.parse("x", "every:4:3")) == "LayerSet('every:4:3')"
    assert str(LayerSet.parse("x", "0-2")) == "0,1,2" and str(LayerSet()) == "none"


def test_preset_dicts_are_unchanged():
    defaults = {"sliding_window_size": None, "keep_first": 0, "force_fa_decode": False, "non_sliding_layers": []}
    for name, (_, fields) in PRESETS.items():
        assert preset_config(name).to_dict() == {**defaults, **fields}, name
    assert preset_config("quarter-full-2k").to_dict()["non_sliding_layers"] == "every:4:3"


RECIPES = sorted((Path(__file__).resolve().parents[1] / "launch").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_carry_their_preset_as_written(recipe):
    """Each launch/ recipe names its preset in its first line and carries that preset's to_dict, key for key."""
    text = recipe.read_text()
    name = re.search(r"\(preset '([^']+)'\)", text.splitlines()[0]).group(1)
    override = yaml.safe_load(text)["json-model-override-args"]
    assert override == json.dumps({"swaa": preset_config(name).to_dict()})


# -- the window in SGLang's terms ------------------------------------------------------------
def test_sglang_window_is_w_minus_one():
    assert SWAAConfig(2048).sglang_window == 2047
    assert SWAAConfig(1).sglang_window == 0  # FlashInfer's window_left 0: the query alone
    assert SWAAConfig().sglang_window == -1  # FlashInfer's and SGLang's "no window"
    assert sglang_window(4096) == 4095
    with pytest.raises(ValueError, match=r"^evict_window: window eviction needs sliding_window_size >= 2"):
        sglang_window(1)


# -- one on/off vocabulary -------------------------------------------------------------------
def _spellings(word: str) -> list[str]:
    return [word, word.upper(), word.capitalize(), f" {word} "]


@pytest.mark.parametrize("word, value", [(w, True) for w in ON_WORDS] + [(w, False) for w in OFF_WORDS])
def test_on_off_words_mean_the_same_for_every_switch(word, value):
    for text in _spellings(word):
        assert parse_on_off("evict_window", text) is value
        assert parse_fa_decode(text) is value
        assert SWAAConfig.from_cli("64", evict_window=text).evict_window is value
        assert SWAAConfig.from_cli("64", fa_decode=text).force_fa_decode is value


def test_on_off_vocabulary():
    assert (ON_WORDS, OFF_WORDS) == (("on", "true", "yes"), ("off", "false", "no"))
    assert parse_on_off("evict_window", True) is True and parse_on_off("evict_window", False) is False
    for bad in ("1", "0", "all", "none", "", "maybe"):
        with pytest.raises(ValueError) as e:
            parse_on_off("evict_window", bad)
        message = str(e.value)
        assert message.startswith(f"evict_window: expected on or off; got {bad!r}. Allowed: "), message
        assert all(w in message for w in ON_WORDS + OFF_WORDS), message


def test_fa_decode_words_and_layers():
    assert parse_fa_decode("all") is True  # every sliding layer
    assert parse_fa_decode("none") is False and parse_fa_decode("") is False
    assert parse_fa_decode("1") == LayerSet(ids=(1,))  # a number is a layer id, not "on"
    assert parse_fa_decode("0-2") == LayerSet(ids=(0, 1, 2))
    assert parse_fa_decode("odd") == LayerSet.parse("force_fa_decode", "odd")
    with pytest.raises(ValueError, match=r"^force_fa_decode: cannot read 'maybe'"):
        parse_fa_decode("maybe")


# -- the --swaa-* flags (swaa_sglang.cli) ------------------------------------------------------
def _flags(*argv: str, eviction: bool = True) -> SWAAConfig | None:
    parser = argparse.ArgumentParser()
    add_swaa_args(parser, eviction=eviction)
    return config_from_args(parser.parse_args(list(argv)))


def test_each_flag_sets_its_field():
    assert _flags() is None
    assert _flags("--swaa-window", "64") == SWAAConfig(64)
    assert _flags("--swaa-window", "none") == SWAAConfig()
    assert _flags("--swaa-window", "64", "--swaa-keep-first", "4") == SWAAConfig(64, 4)
    assert _flags("--swaa-window", "64", "--swaa-fa-decode", "on") == SWAAConfig(64, force_fa_decode=True)
    assert _flags("--swaa-window", "64", "--swaa-fa-decode", "odd") == SWAAConfig(64, force_fa_decode="odd")
    assert _flags("--swaa-window", "64", "--swaa-full-layers", "0-3") == SWAAConfig(64, non_sliding_layers=[0, 1, 2, 3])
    assert _flags("--swaa-window", "64", "--swaa-evict-window", "yes") == SWAAConfig(64, evict_window=True)


def test_flags_override_a_preset_or_a_file(tmp_path):
    assert _flags("--swaa-preset", "balanced", "--swaa-keep-first", "4") == SWAAConfig(
        2048, 4, force_fa_decode=True, non_sliding_layers="odd"
    )
    f = tmp_path / "swaa.yaml"
    f.write_text("preset: sink100-2k\nsliding_window_size: 512\n")
    assert _flags("--swaa-config", str(f)) == SWAAConfig(512, 100)
    assert _flags("--swaa-config", str(f), "--swaa-window", "256", "--swaa-full-layers", "every:4:3") == SWAAConfig(
        256, 100, non_sliding_layers="every:4:3"
    )
    with pytest.raises(ValueError, match=r"^swaa_config: give --swaa-preset or --swaa-config, not both"):
        _flags("--swaa-preset", "balanced", "--swaa-config", str(f))
    with pytest.raises(ValueError, match=r"^keep_first: expected an integer; got 'x'"):
        _flags("--swaa-window", "64", "--swaa-keep-first", "x")
    with pytest.raises(SystemExit):
        _flags("--swaa-preset", "fast")


def test_flags_without_eviction_and_their_dests():
    assert _flags("--swaa-window", "64", eviction=False) == SWAAConfig(64)
    with pytest.raises(SystemExit):
        _flags("--swaa-evict-window", "on", eviction=False)
    parser = argparse.ArgumentParser()
    add_swaa_args(parser)
    assert set(vars(parser.parse_args([]))) == set(FLAG_DESTS)  # what a launcher removes before SGLang sees it
