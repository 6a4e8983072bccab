"""SWAAConfig: every field, every parse path, every invalid case with its message."""

from __future__ import annotations

import json

import pytest

from swaa_sglang.config import PRESETS, SWAAConfig, parse_layer_spec, preset_config, resolve_layers


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
    assert resolve_layers(parse_layer_spec("non_sliding_layers", spec), n) == expected
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
    assert n.keep_first == 10 and n.sliding_window_size == 2048 and n.non_sliding_layers == "odd"


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
    assert SWAAConfig.from_cli("1024", fa_decode="1,3").force_fa_decode == (1, 3)
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
