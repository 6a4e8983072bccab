"""Window eviction wired into the server (CPU): config, CLI, the hybrid-SWA override, plugin hooks,
registration, and the backend's slot translation against SGLang's real SWA pool."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
import subprocess
import sys
import types

import pytest
import torch

from swaa_sglang.serving.checks import ModelFacts, check_model, check_server_args
from swaa_sglang import SWAAConfig
from swaa_sglang.serving.startup_hooks import suggested_swa_full_tokens_ratio
from swaa_sglang.cli import add_swaa_args, config_from_args
from swaa_sglang.serving.server_args import (
    hybrid_layer_pattern,
    hybrid_overrides,
    with_config,
)

from launcher_subprocess import QWEN3_CONFIG, prepare_in_subprocess



# -- config and CLI ------------------------------------------------------------------------
def test_evict_window_field():
    assert SWAAConfig(64).evict_window is None  # undecided: the default depends on the layers
    c = SWAAConfig(64, 4, evict_window=True)
    assert c.to_dict()["evict_window"] is True
    assert SWAAConfig(64, 4, evict_window=False).to_dict()["evict_window"] is False
    assert "evict_window" not in SWAAConfig(64, 4).to_dict()  # the four paper knobs unchanged by default
    assert SWAAConfig.from_dict(c.to_dict()) == c
    assert SWAAConfig.from_json(json.dumps({"sliding_window_size": 64, "evict_window": True})) == c.__class__(
        64, evict_window=True
    )
    assert c.resolved(4).evict_window is True
    assert SWAAConfig.from_cli("64", evict_window="on").evict_window is True
    assert SWAAConfig.from_cli(evict_window="off", base=c).evict_window is False
    assert SWAAConfig.from_dict(SWAAConfig(64, evict_window=False).to_dict()).evict_window is False


@pytest.mark.parametrize(
    "config, num_layers, on",
    [
        (SWAAConfig(2048, 100), 36, True),  # sink100-2k: every layer windowed
        (SWAAConfig(2048), 36, True),  # window-2k
        (SWAAConfig(2048, 100, force_fa_decode=True), 36, False),  # fa-decode-2k: nothing windowed
        (SWAAConfig(2048, 100, force_fa_decode=True, non_sliding_layers="odd"), 36, False),  # balanced
        (SWAAConfig(2048, 100, force_fa_decode="odd"), 36, True),  # even layers windowed beside odd FA decode
        (SWAAConfig(2048, 100, non_sliding_layers=[0, 1]), 2, False),  # every layer full
        (SWAAConfig(2048, 100, non_sliding_layers=[0, 1]), 3, True),  # layer 2 windowed beside full ones
        (SWAAConfig(2048, 100, non_sliding_layers="odd"), 36, True),  # sw+sink+odd, the calibrator's kind
        (SWAAConfig(None), 36, False),  # full attention
        (SWAAConfig(2048, 100, evict_window=False), 36, False),  # the user's choice stands
    ],
)
def test_eviction_default_is_on_exactly_where_a_layer_is_windowed(config, num_layers, on):
    decided = config.with_eviction_resolved(num_layers)
    assert decided.evict_window is on
    assert bool(decided.windowed_layers(num_layers)) is on or config.evict_window is False
    decided.validate(num_layers)  # a decided default is always servable
    assert decided.with_eviction_resolved(num_layers) == decided  # deciding twice changes nothing
    assert SWAAConfig.from_dict(decided.to_dict()) == decided  # the decision travels in the override


@pytest.mark.parametrize("config, windowed", [
    (SWAAConfig(2048, 100, non_sliding_layers="odd"), [0, 2, 4, 6]),
    (SWAAConfig(2048, 100, force_fa_decode=[0, 1]), [2, 3, 4, 5, 6, 7]),
    (SWAAConfig(2048, 100, non_sliding_layers=[7]), [0, 1, 2, 3, 4, 5, 6]),
])
def test_eviction_beside_full_kv_layers_puts_only_windowed_layers_in_the_swa_pool(config, windowed):
    """Full and FA-decode layers beside windowed ones: eviction is on by default and when asked for, and
    SGLang's layer pattern puts exactly the windowed layers in the SWA pool (the rest keep all their KV)."""
    for asked in (None, True):
        decided = replace(config, evict_window=asked).with_eviction_resolved(8).validate(8)
        assert decided.evict_window is True
        assert hybrid_layer_pattern(decided, 8) == [int(i in windowed) for i in range(8)]
    assert replace(config, evict_window=False).validate(8).evict_window is False


def test_eviction_default_refuses_a_window_of_one():
    with pytest.raises(ValueError, match="evict_window: window eviction needs sliding_window_size >= 2.*"
                                         "evict_window false"):
        SWAAConfig(1, 4).with_eviction_resolved(8)
    assert SWAAConfig(1, 4, evict_window=False).with_eviction_resolved(8).evict_window is False


def test_evict_window_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("swaa:\n  sliding_window_size: 128\n  keep_first: 4\n  evict_window: true\n")
    assert SWAAConfig.from_file(f) == SWAAConfig(128, 4, evict_window=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(evict_window="yes"), "evict_window: must be true, false or unset"),
        (dict(sliding_window_size=None, evict_window=True), "evict_window: window eviction needs a sliding window"),
        (dict(sliding_window_size=1, evict_window=True), "evict_window: window eviction needs sliding_window_size >= 2"),
        (dict(sliding_window_size=64, force_fa_decode=True, evict_window=True),
         "evict_window: force_fa_decode is on for every layer"),
    ],
)
def test_evict_window_refusals(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SWAAConfig(**{"sliding_window_size": 64, **kwargs})


def test_evict_window_needs_a_windowed_layer():
    with pytest.raises(ValueError, match="evict_window: no layer is windowed"):
        SWAAConfig(64, force_fa_decode="even", non_sliding_layers="odd", evict_window=True).validate(4)
    with pytest.raises(ValueError, match="evict_window: no layer is windowed"):
        SWAAConfig(64, non_sliding_layers="0-3", evict_window=True).validate(4)
    SWAAConfig(64, 4, evict_window=True).validate(4)  # every layer windowed
    SWAAConfig(64, force_fa_decode="even", evict_window=True).validate(4)  # layers 1, 3 windowed


def _parse(*argv):
    p = argparse.ArgumentParser()
    add_swaa_args(p)
    return config_from_args(p.parse_args(list(argv)))


def test_cli_flag():
    assert _parse("--swaa-window", "64", "--swaa-evict-window", "on") == SWAAConfig(64, evict_window=True)
    assert _parse("--swaa-preset", "sink10-2k", "--swaa-evict-window", "on") == SWAAConfig(2048, 10, evict_window=True)
    assert _parse("--swaa-window", "64", "--swaa-evict-window", "off").evict_window is False
    with pytest.raises(ValueError, match="evict_window: expected on or off"):
        _parse("--swaa-window", "64", "--swaa-evict-window", "maybe")
    with pytest.raises(ValueError, match="evict_window: window eviction needs a sliding window"):
        _parse("--swaa-evict-window", "on")


# -- the hybrid-SWA override ------------------------------------------------------------------
@pytest.mark.parametrize(
    "config, layers, pattern",
    [
        # every layer windowed: the last is kept whole (hybrid allocator, docs/design/eviction.md)
        (SWAAConfig(64, 4, evict_window=True), 4, [1, 1, 1, 0]),
        (SWAAConfig(64, 4, non_sliding_layers="odd", evict_window=True), 6, [1, 0, 1, 0, 1, 0]),
        (SWAAConfig(64, 0, force_fa_decode=[0, 2], evict_window=True), 4, [0, 1, 0, 1]),
        (SWAAConfig(2048, 100, force_fa_decode="every:4:3", non_sliding_layers=[0], evict_window=True), 8,
         [0, 1, 1, 0, 1, 1, 1, 0]),
    ],
)
def test_override_pattern_and_window(config, layers, pattern):
    assert hybrid_layer_pattern(config, layers) == pattern
    over = json.loads(with_config('{"rope_theta": 5}', config, layers))
    assert over["rope_theta"] == 5
    assert SWAAConfig.from_dict(over["swaa"]) == config
    assert over["is_hybrid_swa"] is True
    assert over["sliding_window_size"] == config.sglang_window
    assert over["hybrid_layer_pattern"] == pattern
    # without the layer count: everything but the pattern (the model-config hook completes it)
    assert "hybrid_layer_pattern" not in json.loads(with_config(None, config))
    # pattern 1 only on windowed layers: eviction never touches KV a layer may still read
    for i, p in enumerate(pattern):
        assert p == 0 or config.windowed_decode(i)


def test_override_absent_when_off():
    c = SWAAConfig(64, 4)
    assert hybrid_overrides(c, 4) == {}
    assert set(json.loads(with_config(None, c, 4))) == {"swaa"}


def test_suggested_ratio():
    r = suggested_swa_full_tokens_ratio(2048, 100, 131072)
    assert r == pytest.approx(2 * (2048 + 100 + 128 + 1) / 131072)
    assert suggested_swa_full_tokens_ratio(8192, 0, 4096) == 1.0
    # at 128K, 28 layers (one kept whole): >= 10x the full-KV tokens per byte
    cell = 1 + r * 27
    assert 28 / cell >= 10


# -- registration ----------------------------------------------------------------------------------
def test_check_model_accepts_our_window_only():
    """With eviction on, SGLang's window must be the W - 1 our model-config hook set, and the model class
    must not bring its own; with it off, any window SGLang runs with is the model's own."""
    ev = SWAAConfig(64, 4, evict_window=True)
    check_model(ev, ModelFacts(28, 4096, sliding_window=63))
    with pytest.raises(ValueError, match="model: this model already has native sliding-window"):
        check_model(SWAAConfig(64, 4, evict_window=False), ModelFacts(28, 4096, sliding_window=4095))
    with pytest.raises(ValueError, match="model: this model already has native sliding-window"):
        check_model(SWAAConfig(64, 4, evict_window=False), ModelFacts(28, 4096, model_class_window=True))
    with pytest.raises(ValueError, match="evict_window: SGLang's hybrid SWA pool is not set up"):
        check_model(ev, ModelFacts(28, 4096, sliding_window=4095))
    with pytest.raises(ValueError, match="evict_window: SGLang's hybrid SWA pool is not set up"):
        check_model(ev, ModelFacts(28, 4096))
    # a model class with its own window that happens to equal ours is still not ours
    with pytest.raises(ValueError, match="evict_window: SGLang's hybrid SWA pool is not set up"):
        check_model(ev, ModelFacts(28, 4096, sliding_window=63, model_class_window=True))


def test_eviction_keys_without_eviction_are_refused():
    """The hybrid-SWA keys window eviction writes, carried by an override whose config has eviction off."""
    carried = json.dumps({"swaa": SWAAConfig(64, 4, evict_window=False).to_dict(), "is_hybrid_swa": True, "sliding_window_size": 63})
    with pytest.raises(ValueError, match="evict_window: the model config carries SWAA's eviction window "
                                         "\\(is_hybrid_swa, sliding_window_size in json_model_override_args\\)"):
        check_server_args(types.SimpleNamespace(json_model_override_args=carried, attention_backend="swaa"))
    # a model's own sliding_window_size key alone does not switch the hybrid pool on: not ours to refuse here
    own = json.dumps({"swaa": SWAAConfig(64, 4, evict_window=False).to_dict(), "sliding_window_size": 63})
    check_server_args(types.SimpleNamespace(json_model_override_args=own, attention_backend="swaa"))


def _args(config: SWAAConfig, **kw):
    return types.SimpleNamespace(json_model_override_args=with_config(None, config), attention_backend="swaa", **kw)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(radix_cache_backend="lmcache"), "radix_cache_backend: 'lmcache' does not know SWAA sinks"),
        (dict(disable_hybrid_swa_memory=True), "disable_hybrid_swa_memory: window eviction"),
        (dict(enable_hierarchical_cache=True), "enable_hierarchical_cache: not supported with window eviction"),
    ],
)
def test_server_arg_refusals_with_eviction(kw, message):
    with pytest.raises(ValueError, match=message):
        check_server_args(_args(SWAAConfig(64, 4, evict_window=True), **kw))


def test_any_page_size_is_accepted_with_and_without_eviction():
    # sinks and windows are kept at page granularity (tests/test_eviction.py runs pages 1, 16 and 64)
    for page in (None, 1, 16, 64):
        for on in (True, False):
            assert check_server_args(_args(SWAAConfig(64, 4, evict_window=on), page_size=page)).evict_window is on


def test_eviction_cache_needs_eviction():
    check_server_args(_args(SWAAConfig(64, 4, evict_window=True), radix_cache_backend="swaa"))
    with pytest.raises(ValueError, match="radix_cache_backend: 'swaa' is SWAA's window-eviction cache"):
        check_server_args(_args(SWAAConfig(64, 4, evict_window=False), radix_cache_backend="swaa"))


# -- the real ServerArgs / ModelConfig path, in a fresh process (hooks are process-global) -------------
_REPORT = (
    "mc = sa.get_model_config()\n"
    "out = {'override': json.loads(sa.json_model_override_args),\n"
    "       'cache': sa.radix_cache_backend, 'ratio': sa.swa_full_tokens_ratio, 'hybrid': mc.is_hybrid_swa,\n"
    "       'window': mc.sliding_window_size, 'swa_layers': getattr(mc, 'swa_attention_layer_ids', None),\n"
    "       'full_layers': getattr(mc, 'full_attention_layer_ids', None), 'context_len': mc.context_len}"
)


def _prepare(*argv: str) -> dict:
    return prepare_in_subprocess(_REPORT, *argv)


@pytest.mark.slow
def test_launcher_switches_the_hybrid_pool_on():
    """28-layer Qwen3 config, every layer windowed: 27 layers in the SWA pool, the last kept whole.
    Eviction is on by default here; asking for it explicitly gives the same server."""
    out = _prepare("--swaa-window", "64", "--swaa-keep-first", "4")
    assert _prepare("--swaa-window", "64", "--swaa-keep-first", "4", "--swaa-evict-window", "on") == out
    assert out["override"]["swaa"]["evict_window"] is True  # the decision, written for the workers
    assert out["cache"] == "swaa"
    assert out["hybrid"] is True and out["window"] == 63
    assert out["swa_layers"] == list(range(27)) and out["full_layers"] == [27]
    over = out["override"]
    assert over["is_hybrid_swa"] is True and over["sliding_window_size"] == 63
    assert over["hybrid_layer_pattern"] == [1] * 27 + [0]
    assert out["ratio"] == pytest.approx(suggested_swa_full_tokens_ratio(64, 4, out["context_len"]))
    assert _prepare("--swaa-window", "64", "--swaa-keep-first", "4", "--swa-full-tokens-ratio", "0.25")[
        "ratio"] == 0.25  # the user's choice is kept
    # FA decode on the odd layers: they keep all KV in the full pool, the even ones are evicted; on by default
    out = _prepare("--swaa-window", "64", "--swaa-fa-decode", "odd")
    assert _prepare("--swaa-window", "64", "--swaa-fa-decode", "odd", "--swaa-evict-window", "on") == out
    assert out["cache"] == "swaa" and out["hybrid"] is True and out["override"]["swaa"]["evict_window"] is True
    assert out["swa_layers"] == list(range(0, 28, 2)) and out["full_layers"] == list(range(1, 28, 2))


@pytest.mark.slow
def test_launcher_without_eviction_is_unchanged():
    """Eviction off, asked for or by default (no windowed layer: FA decode everywhere): SGLang's own pool."""
    for flags in (("--swaa-evict-window", "off"), ("--swaa-fa-decode", "on")):
        out = _prepare("--swaa-window", "64", "--swaa-keep-first", "4", *flags)
        assert out["cache"] is None and out["hybrid"] is False and out["window"] is None
        assert set(out["override"]) == {"swaa"} and out["override"]["swaa"]["evict_window"] is False
        assert out["ratio"] == 0.8


@pytest.mark.slow
def test_launcher_refusals():
    assert _prepare("--swaa-window", "64", "--swaa-evict-window", "on", "--radix-cache-backend", "other")[
        "error"].startswith("radix_cache_backend: 'other' does not know SWAA sinks")
    assert _prepare("--swaa-window", "64", "--swaa-fa-decode", "on", "--swaa-evict-window", "on")[
        "error"].startswith("evict_window: force_fa_decode is on for every layer")
    assert _prepare("--swaa-window", "64", "--swaa-full-layers", "0-27", "--swaa-evict-window", "on")[
        "error"].startswith("evict_window: no layer is windowed")


@pytest.mark.slow
def test_plain_sglang_override_path():
    """sglang.launch_server / Engine: only the swaa key is given; the hook derives the rest."""
    code = (
        "import json, sys\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "from sglang.srt.server_args import prepare_server_args\n"
        "sa = prepare_server_args(sys.argv[1:])\n"
        "mc = sa.get_model_config()\n"
        "print('ARGS:' + json.dumps({'cache': sa.radix_cache_backend, 'hybrid': mc.is_hybrid_swa,\n"
        "      'window': mc.sliding_window_size, 'full': getattr(mc, 'full_attention_layer_ids', None),\n"
        "      'override': json.loads(sa.json_model_override_args)}))\n"
    )
    def serve(swaa: dict) -> tuple[dict | None, str]:
        r = subprocess.run(
            [sys.executable, "-c", code, "--model-path", QWEN3_CONFIG, "--load-format", "dummy", "--device", "cpu",
             "--attention-backend", "swaa", "--json-model-override-args", json.dumps({"swaa": swaa})],
            capture_output=True, text=True, timeout=600,
        )
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("ARGS:")]
        return (json.loads(line[-1][5:]) if line else None), r.stderr

    for explicit in ({"evict_window": True}, {}):  # asked for, and by default
        out, err = serve({"sliding_window_size": 32, "keep_first": 2, **explicit})
        assert out is not None, err[-3000:]
        assert out["cache"] == "swaa" and out["hybrid"] is True and out["window"] == 31
        assert out["full"] == [27]  # every layer windowed: the last one's KV is kept whole (hybrid pool)
        assert out["override"]["hybrid_layer_pattern"] == [1] * 27 + [0]
        assert out["override"]["swaa"]["evict_window"] is True
    # full layers beside windowed ones: they keep all KV, the windowed ones are evicted (asked for, and by default)
    for explicit in ({"evict_window": True}, {}):
        out, err = serve({"sliding_window_size": 32, "keep_first": 2, "non_sliding_layers": "every:7", **explicit})
        assert out is not None, err[-3000:]
        assert out["cache"] == "swaa" and out["hybrid"] is True and out["full"] == [0, 7, 14, 21]
        assert out["override"]["hybrid_layer_pattern"] == [0 if i % 7 == 0 else 1 for i in range(28)]
        assert out["override"]["swaa"]["evict_window"] is True


@pytest.mark.slow
def test_plugin_registers_cache_backend_and_hooks_in_a_fresh_process():
    code = (
        "from sglang.srt.plugins import load_plugins\n"
        "from sglang.srt.mem_cache.registry import get_radix_cache_factory\n"
        "assert get_radix_cache_factory('swaa') is None\n"
        "load_plugins()\n"
        "from swaa_sglang.serving.eviction_hooks import _radix_cache_factory\n"
        "assert get_radix_cache_factory('swaa') is _radix_cache_factory\n"
        "from sglang.srt.managers.schedule_batch import Req\n"
        "assert getattr(Req.__init__, '__wrapped__', None) is not None, 'Req hook not applied'\n"
        "from sglang.srt.configs.model_config import ModelConfig\n"
        "assert getattr(ModelConfig._derive_hybrid_model, '__wrapped__', None) is not None, 'ModelConfig hook'\n"
        "from sglang.srt.managers.schedule_policy import PrefillAdder\n"
        "from swaa_sglang.serving import eviction_hooks\n"
        "admission = (*eviction_hooks.ADMISSION_RESERVE_HOOKS, *eviction_hooks.ADMISSION_ONE_CHUNK_HOOKS)\n"
        "assert len(admission) == 4\n"
        "for h in admission:\n"
        "    owner, name = h.target.path.rsplit('.', 1)\n"
        "    assert owner == PrefillAdder.__module__ + '.PrefillAdder', owner\n"
        "    assert getattr(getattr(PrefillAdder, name), '__wrapped__', None) is not None, 'admission hook ' + name\n"
        "import sglang.srt.managers.schedule_batch as sb\n"
        "from swaa_sglang.serving import seam\n"
        "assert seam.FREE_SWA_OUT_OF_WINDOW_SLOTS.path == sb.__name__ + '.free_swa_out_of_window_slots'\n"
        "assert getattr(sb.free_swa_out_of_window_slots, '__wrapped__', None) is not None, 'window-free counter'\n"
        "print('registered')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "registered" in r.stdout


# -- scheduler side: the cache factory and the request floor -------------------------------------------
def _pool(full=40, swa=20, layers=(0, 1), swa_layers=(0,)):
    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    pool = SWAKVPool(
        size=full, size_swa=swa, page_size=1, dtype=torch.float32, head_num=1, head_dim=1,
        swa_attention_layer_ids=list(swa_layers), full_attention_layer_ids=[i for i in layers if i not in swa_layers],
        device="cpu",
    )
    alloc = SWATokenToKVPoolAllocator(full, swa, 1, torch.float32, "cpu", pool, need_sort=False)
    return pool, alloc


def test_radix_cache_factory_reads_k_from_the_override():
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool

    from attention_backends.radix_cache import SWAASinkRadixCache
    from swaa_sglang.serving.eviction_hooks import _radix_cache_factory

    pool, alloc = _pool()
    params = CacheInitParams(disable=False, req_to_token_pool=ReqToTokenPool(4, 64, "cpu", False),
                             token_to_kv_pool_allocator=alloc, page_size=1, sliding_window_size=7)
    sa = types.SimpleNamespace(json_model_override_args=with_config(None, SWAAConfig(8, 3, evict_window=True)))
    ctx = types.SimpleNamespace(server_args=sa, is_hybrid_swa=True, disable_radix_cache=False,
                                full_tokens_per_layer=40, params=params)
    cache = _radix_cache_factory(ctx)
    assert isinstance(cache, SWAASinkRadixCache) and cache.keep_first == 3 and cache.sliding_window_size == 7
    sa.json_model_override_args = with_config(None, SWAAConfig(8, 3, evict_window=False))
    with pytest.raises(ValueError, match="radix_cache_backend: 'swaa' is SWAA's window-eviction cache"):
        _radix_cache_factory(ctx)


def test_req_floor_hook_follows_the_server_config(monkeypatch):
    import sglang.srt.runtime_context as rc

    from swaa_sglang.serving import eviction_hooks

    sa = types.SimpleNamespace(attention_backend="swaa", page_size=1,
                               json_model_override_args=with_config(None, SWAAConfig(8, 5, evict_window=True)))
    monkeypatch.setattr(rc, "get_server_args", lambda: sa)
    req = types.SimpleNamespace(swa_evict_floor=0)
    eviction_hooks._req_sink_floor(None, req)
    assert req.swa_evict_floor == 5
    sa.page_size = 4
    req = types.SimpleNamespace(swa_evict_floor=0)
    eviction_hooks._req_sink_floor(None, req)
    assert req.swa_evict_floor == 8  # page-ceiled
    sa.json_model_override_args = with_config(None, SWAAConfig(8, 5, evict_window=False))  # eviction off: floor untouched
    req = types.SimpleNamespace(swa_evict_floor=0)
    eviction_hooks._req_sink_floor(None, req)
    assert req.swa_evict_floor == 0
    # undecided (the launcher's hook did not run): refused, never guessed
    sa.json_model_override_args = with_config(None, SWAAConfig(8, 5))
    with pytest.raises(ValueError, match="evict_window: the swaa config reached the server undecided"):
        eviction_hooks._req_sink_floor(None, types.SimpleNamespace(swa_evict_floor=0))


def test_window_free_counter_counts_only_under_swaa_eviction(monkeypatch):
    """The AROUND hook counts through the allocator only when this process serves SWAA with eviction
    on; otherwise (eviction off, another backend, no server) it calls SGLang's function untouched.
    Called as HookRegistry calls it: the seam wrapper binds the allocator by the real target's signature."""
    import sglang.srt.runtime_context as rc

    from swaa_sglang.serving import eviction_hooks

    calls = []

    class Allocator:
        def free_swa(self, slots):
            calls.append(len(slots))

    def original(req, pre_len, *, sliding_window_size, page_size, req_to_token_pool, token_to_kv_pool_allocator,
                 is_chunk_cache=False):  # stands in for SGLang's function (its signature)
        token_to_kv_pool_allocator.free_swa([1, 2, 3])
        return "done"

    (hook,) = [h for h in eviction_hooks.HOOKS if h.body is eviction_hooks._count_window_frees]
    wrapper = hook.wrapper()
    counter = eviction_hooks.WindowFreeCounter()
    monkeypatch.setattr(eviction_hooks, "WINDOW_FREES", counter)
    sa = types.SimpleNamespace(attention_backend="swaa", page_size=1,
                               json_model_override_args=with_config(None, SWAAConfig(8, 5, evict_window=True)))
    monkeypatch.setattr(rc, "get_server_args", lambda: sa)
    alloc = Allocator()
    kw = dict(sliding_window_size=7, page_size=1, req_to_token_pool=None, token_to_kv_pool_allocator=alloc)
    assert wrapper(original, None, 9, **kw) == "done"
    assert counter.total == 3 and calls == [3] and "free_swa" not in vars(alloc)

    def not_published():
        raise ValueError("Global server args is not set yet!")  # what SGLang's get_server_args raises

    for off in (types.SimpleNamespace(**{**vars(sa), "json_model_override_args": with_config(None, SWAAConfig(8, 5, evict_window=False))}),
                types.SimpleNamespace(**{**vars(sa), "attention_backend": "flashinfer"})):
        monkeypatch.setattr(rc, "get_server_args", lambda off=off: off)
        assert wrapper(original, None, 9, **kw) == "done"
    monkeypatch.setattr(rc, "get_server_args", not_published)
    assert wrapper(original, None, 9, **kw) == "done"
    assert counter.total == 3 and calls == [3, 3, 3, 3]


@pytest.mark.slow
def test_req_floor_hook_with_sglang_req_and_server_args():
    """SGLang's real Req with the plugin's hooks applied: built outside a server (no server args
    published) it is left alone, no error; under published server args with eviction on it gets the
    page-ceiled sink floor; with eviction off it keeps SGLang's 0."""
    code = (
        "import types\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "from sglang.srt.managers.schedule_batch import Req\n"
        "from sglang.srt.runtime_context import get_context\n"
        "from sglang.srt.sampling.sampling_params import SamplingParams\n"
        "from swaa_sglang import SWAAConfig\n"
        "from swaa_sglang.serving.server_args import with_config\n"
        "def floor():\n"
        "    return Req('r', '', [1, 2, 3], SamplingParams(max_new_tokens=4)).swa_evict_floor\n"
        "print('FLOOR none', floor())\n"
        "for name, cfg, page in (('on', SWAAConfig(8, 5, evict_window=True), 4), ('off', SWAAConfig(8, 5, evict_window=False), 4)):\n"
        "    get_context().set_server_args(types.SimpleNamespace(attention_backend='swaa', page_size=page,\n"
        "                                  json_model_override_args=with_config(None, cfg)))\n"
        "    print('FLOOR', name, floor())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    floors = [ln for ln in r.stdout.splitlines() if ln.startswith("FLOOR")]
    assert floors == ["FLOOR none 0", "FLOOR on 8", "FLOOR off 0"], r.stdout + r.stderr[-2000:]


# -- the backend's index lists, translated through SGLang's real SWA pool ---------------------------------
def test_translated_index_lists_read_only_live_swa_kv():
    """Plans for windowed layers gathered with ``translate_loc_from_full_to_swa`` hit exactly the SWA slots
    holding each needed position, after SGLang's own out-of-window eviction; untranslated lists hit full slots."""
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc

    from attention_backends.flashinfer_ops import copy_ranges, map_slots, slots_on_device
    from attention_backends.planning import decode_ranges, plan_extra, plan_window

    W, k = 6, 3
    pool, alloc = _pool(full=60, swa=40)
    r2t = torch.zeros(3, 40, dtype=torch.int32)
    lens = [25, 9]
    rows = torch.tensor([2, 0])
    swa_layer = types.SimpleNamespace(layer_id=0)
    full_layer = types.SimpleNamespace(layer_id=1)
    for b, L in enumerate(lens):
        full = alloc.alloc(L)
        r2t[rows[b], :L] = full.to(torch.int32)
        tag = torch.arange(L, dtype=torch.float32).view(L, 1, 1) + 100 * (b + 1)  # content = (request, position)
        loc = KVWriteLoc(full, pool.translate_loc_from_full_to_swa(full))
        pool.set_kv_buffer(swa_layer, loc, tag, tag)
        pool.set_kv_buffer(full_layer, loc, tag, tag)
        # SGLang's eviction for the query at position L - 1 (free_swa_out_of_window_slots with
        # pre_len = L - 1, window W - 1): keep the sinks [0, k) (floor) and [L - W, L)
        drop = full[k : max(k, L - W)]
        alloc.free_swa(drop)
    assert (pool.translate_loc_from_full_to_swa(r2t[2, 3:19].long()) == 0).all()  # evicted: mapped to 0

    swa_k = pool.get_key_buffer(0)[:, 0, 0]
    full_k = pool.get_key_buffer(1)[:, 0, 0]
    to_swa = pool.translate_loc_from_full_to_swa

    def content(slots, buf):
        return buf[slots.long()].tolist()

    # prefill: a 1-token extend at position L - 1 over the cached prefix [0, L - 1)
    prefix = torch.tensor([L - 1 for L in lens])
    extend = torch.ones(2, dtype=torch.int64)
    win = plan_window(prefix, extend, W)
    for slot_map, buf in ((to_swa, swa_k), (None, full_k)):
        got = content(slots_on_device(win, r2t, rows, slot_map), buf)
        want = [100 * (int(r) + 1) + int(p) for r, p in zip(win.kv_req, win.kv_pos)]
        assert got == want
    extra = plan_extra(prefix, extend, W, k)
    assert not extra.empty
    seg = extra.segments
    got = content(slots_on_device(seg, r2t, rows, to_swa), swa_k)
    assert got == [100 * (int(r) + 1) + int(p) for r, p in zip(seg.kv_req, seg.kv_pos)]
    assert (slots_on_device(seg, r2t, rows, to_swa) > 0).all()
    # fused sinks: [bs, k] of sink slots
    sinks = map_slots(r2t[rows.long(), :k], to_swa)
    assert sinks.dtype == torch.int32 and content(sinks, swa_k) == [[100 + j for j in range(k)], [200 + j for j in range(k)]]

    # decode of position L - 1 (seq_lens = L): sinks ++ last W, the SlidingDecode gather (CPU branch of
    # copy_ranges) then the map
    seq_lens = torch.tensor(lens)
    n_sink, win_start, win_len = decode_ranges(seq_lens, W, k)
    total = int((n_sink + win_len).sum())
    offsets = torch.cumsum(n_sink + win_len, 0) - (n_sink + win_len)
    out = torch.empty(total, dtype=torch.int32)
    copy_ranges(r2t, rows, n_sink, offsets, None, out)
    copy_ranges(r2t, rows, win_len, offsets + n_sink, win_start, out)
    mapped = map_slots(out, to_swa)
    assert (mapped > 0).all()
    want = [100 + j for j in range(k)] + [100 + j for j in range(25 - W, 25)]
    want += [200 + j for j in range(k)] + [200 + j for j in range(9 - W, 9)]
    assert content(mapped, swa_k) == want


def test_op_check_reads_the_swa_buffer_through_the_slot_map(tmp_path):
    """Evicted positions hold garbage (NaN) in the SWA buffer; the check must still pass on the right output."""
    from attention_backends.op_check import OpCheck
    from swaa_sglang import swaa_attention

    cfg = SWAAConfig(sliding_window_size=5, keep_first=2, evict_window=True)
    g = torch.Generator().manual_seed(0)
    hq, hk, d, L = 2, 1, 4, 20
    full_k, full_v = torch.randn(32, hk, d, generator=g), torch.randn(32, hk, d, generator=g)
    r2t = torch.randperm(31, generator=g)[:L].add(1).view(1, L)
    # SWA buffer: live positions (sinks + window of the next query) at their translated slots, NaN elsewhere
    mapping = torch.zeros(33, dtype=torch.int64)
    swa_k, swa_v = torch.full((16, hk, d), float("nan")), torch.full((16, hk, d), float("nan"))
    live = list(range(2)) + list(range(L - 5, L))
    for n, pos in enumerate(live, start=1):
        mapping[r2t[0, pos]] = n
        swa_k[n], swa_v[n] = full_k[r2t[0, pos]], full_v[r2t[0, pos]]
    q = torch.randn(1, hq, d, generator=g)
    slots = r2t[0].long()
    out = swaa_attention(q, full_k[slots], full_v[slots], cfg, 0, torch.tensor([L - 1]), torch.arange(L), decode=True,
                         scale=0.5)
    fb = types.SimpleNamespace(seq_lens=torch.tensor([L]), req_pool_indices=torch.tensor([0]))
    layer = types.SimpleNamespace(tp_q_head_num=hq, head_dim=d, layer_id=0, scaling=0.5)
    path = tmp_path / "check.jsonl"
    check = OpCheck(cfg, str(path), budget=2)
    check.check("decode", layer, out.reshape(1, -1), q.reshape(1, -1), (swa_k, swa_v), r2t, fb,
                slot_map=lambda s: mapping[s.long()])
    check.check("decode", layer, torch.zeros_like(out).reshape(1, -1), q.reshape(1, -1), (swa_k, swa_v), r2t, fb,
                slot_map=lambda s: mapping[s.long()])
    rec = [json.loads(line) for line in path.read_text().splitlines()]
    assert rec[0]["rel_err"] < 1e-6 and rec[1]["rel_err"] > 0.5
