"""Plugin registration, launch_server flags and start-up refusals (CPU, real SGLang)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from swaa_sglang.serving.checks import ModelFacts, check_model, check_server_args
from swaa_sglang import SWAAConfig
from swaa_sglang.serving.server_args import config_from_override_args, with_config

from launcher_subprocess import QWEN3_CONFIG, prepare_in_subprocess

def _run(code: str, *args: str, env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_entry_point_registers_backend_in_a_fresh_process():
    """SGLang's own plugin loader finds our entry point and the name becomes a valid choice."""
    code = (
        "from sglang.srt.plugins import load_plugins\n"
        "from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS\n"
        "from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES\n"
        "from sglang.srt.plugins.hook_registry import HookRegistry\n"
        "assert 'swaa' not in ATTENTION_BACKENDS\n"
        "load_plugins()\n"
        "from swaa_sglang.serving.checks import create_swaa_backend\n"
        "assert ATTENTION_BACKENDS['swaa'] is create_swaa_backend\n"
        "assert 'swaa' in ATTENTION_BACKEND_CHOICES\n"
        "from sglang.srt.server_args import ServerArgs\n"
        "assert getattr(ServerArgs.__post_init__, '__wrapped__', None) is not None, 'server-args hook not applied'\n"
        "from sglang.srt.model_executor.forward_batch_info import ForwardBatch\n"
        "assert getattr(ForwardBatch.init_new, '__wrapped__', None) is not None, 'ForwardBatch hook not applied'\n"
        "print('registered')\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "registered" in r.stdout


@pytest.mark.slow
def test_batch_marking_survives_the_eager_runner_copy():
    """The eager runner hands the model a copy of the ForwardBatch built from its dataclass fields;
    the batch's marking (its requests' prompt lengths) must reach the copy."""
    code = (
        "import dataclasses, os\n"
        "os.environ['SGLANG_EAGER_INPUT_NO_COPY'] = '1'  # the copy is dataclasses.replace: runs on CPU\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode\n"
        "from sglang.srt.model_executor.runner.eager_runner import EagerRunner\n"
        "required = {f.name: None for f in dataclasses.fields(ForwardBatch)\n"
        "            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}\n"
        "fb = ForwardBatch(**required)\n"
        "fb.forward_mode = ForwardMode.MIXED\n"
        "import torch\n"
        "from attention_backends.planning import GENERATED_FROM_ATTR\n"
        "setattr(fb, GENERATED_FROM_ATTR, torch.tensor([5, 7]))\n"
        "out = EagerRunner.load_batch(EagerRunner.__new__(EagerRunner), fb)\n"
        "assert out is not fb\n"
        "marked = getattr(out, GENERATED_FROM_ATTR, None)\n"
        "print('marking on the copy:', None if marked is None else marked.tolist())\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("marking on the copy: [5, 7]"), r.stdout
    # control: without the plugin the copy loses the attribute (so the check above can fail)
    r = _run(code, env_extra={"SGLANG_PLUGINS": "someone_else"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("marking on the copy: None"), r.stdout


@pytest.mark.slow
def test_sglang_plugins_whitelist_can_exclude_us():
    code = (
        "from sglang.srt.plugins import load_plugins\n"
        "from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS\n"
        "load_plugins()\n"
        "print('swaa' in ATTENTION_BACKENDS)\n"
    )
    r = _run(code, env_extra={"SGLANG_PLUGINS": "someone_else"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("False")


def test_plugin_failure_is_loud(monkeypatch):
    """A registration failure exits the process instead of being logged and swallowed."""
    import swaa_sglang.serving.plugin as plugin

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(plugin, "register", broken)
    with pytest.raises(SystemExit, match="failed to register the 'swaa' attention backend: RuntimeError"):
        plugin.load()


def _prepare(*argv: str) -> dict:
    return prepare_in_subprocess(
        "out = {'backend': sa.attention_backend, 'override': sa.json_model_override_args,\n"
        "       'no_prefill_graph': sa.disable_prefill_cuda_graph, 'model': sa.model_path}", *argv)


@pytest.mark.slow
def test_every_swaa_flag_reaches_the_config_the_workers_get():
    """Each --swaa-* flag of the launcher lands in its SWAA field of the override SGLang hands every worker."""
    out = _prepare("--swaa-window", "96", "--swaa-keep-first", "5", "--swaa-fa-decode", "odd",
                   "--swaa-full-layers", "0,1", "--swaa-evict-window", "on")
    assert out["backend"] == "swaa"
    got = SWAAConfig.from_dict(json.loads(out["override"])["swaa"])
    assert got == SWAAConfig(96, 5, force_fa_decode="odd", non_sliding_layers=[0, 1], evict_window=True)
    # eviction's flag reaches it both ways (off, where it would be on by default)
    out = _prepare("--swaa-window", "96", "--swaa-keep-first", "5", "--swaa-evict-window", "off")
    assert SWAAConfig.from_dict(json.loads(out["override"])["swaa"]) == SWAAConfig(96, 5, evict_window=False)


@pytest.mark.slow
def test_model_refusal_needs_no_device_flag():
    """A SWAA field that does not fit the model is refused with the field's message before SGLang looks
    for an accelerator: no --device cpu on this GPU-less machine."""
    code = (
        "import sys\n"
        "from swaa_sglang.launch_server import prepare_server_args\n"
        "try:\n"
        "    prepare_server_args(sys.argv[1:])\n"
        "except ValueError as e:\n"
        "    print('ERROR:' + str(e))\n"
    )
    r = _run(code, "--model-path", QWEN3_CONFIG, "--load-format", "dummy", "--swaa-window", "64",
             "--swaa-full-layers", "999")
    assert "ERROR:non_sliding_layers: layer ids [999] are out of range; this model has 28 layers" in r.stdout, (
        r.stdout[-2000:] + r.stderr[-3000:])


@pytest.mark.slow
def test_launch_server_folds_flags_into_override_args():
    out = _prepare("--swaa-preset", "balanced", "--swaa-keep-first", "4", "--json-model-override-args", '{"rope_theta": 5}')
    assert out["backend"] == "swaa"
    assert out["no_prefill_graph"] is True
    override = json.loads(out["override"])
    assert override["rope_theta"] == 5
    # FA decode on every sliding layer: no windowed layer, so window eviction is decided off
    assert SWAAConfig.from_dict(override["swaa"]) == SWAAConfig(2048, 4, True, "odd", evict_window=False)


@pytest.mark.slow
def test_launch_server_reports_bad_config_with_field(tmp_path):
    assert _prepare("--swaa-window", "0")["error"].startswith("sliding_window_size: must be an integer >= 1")
    assert _prepare("--swaa-window", "64", "--swaa-full-layers", "40")["error"].startswith(
        "non_sliding_layers: layer ids [40] are out of range; this model has 28 layers"
    )
    f = tmp_path / "c.yaml"
    f.write_text("sliding_window_size: 64\nkeep_first: -2\n")
    assert _prepare("--swaa-config", str(f))["error"].startswith("keep_first: must be an integer >= 0")
    assert _prepare("--swaa-window", "64", "--speculative-algorithm", "EAGLE")["error"].startswith(
        "speculative_algorithm: 'EAGLE' is not supported with SWAA"
    )


@pytest.mark.slow
def test_plain_sglang_args_with_override_json_are_checked_too():
    """python -m sglang.launch_server --attention-backend swaa --json-model-override-args ...: same checks."""
    code = (
        "import sys\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "from sglang.srt.server_args import prepare_server_args\n"
        "try:\n"
        "    prepare_server_args(sys.argv[1:])\n"
        "except ValueError as e:\n"
        "    print('ERROR:' + str(e))\n"
    )
    r = _run(code, "--model-path", QWEN3_CONFIG, "--load-format", "dummy", "--device", "cpu",
             "--attention-backend", "swaa", "--json-model-override-args", '{"swaa": {"keep_first": 3, "window": 9}}')
    assert "ERROR:window: unknown SWAA field; allowed fields: sliding_window_size" in r.stdout, r.stderr[-3000:]
    r = _run(code, "--model-path", QWEN3_CONFIG, "--load-format", "dummy", "--device", "cpu", "--attention-backend", "swaa")
    assert "ERROR:swaa: the 'swaa' attention backend needs a SWAA config" in r.stdout, r.stderr[-3000:]


DECIDED = SWAAConfig(64, 4, evict_window=False)


def _server_args(**kw):
    # as the workers receive them: the launching process has decided evict_window (here: off)
    base = dict(json_model_override_args=with_config(None, DECIDED), attention_backend="swaa",
                prefill_attention_backend=None,
                decode_attention_backend=None, speculative_algorithm=None, enable_mis=False, enable_mixed_chunk=False)
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"decode_attention_backend": "triton"}, "decode_attention_backend: 'triton' would run one phase without SWAA"),
        ({"prefill_attention_backend": "fa3"}, "prefill_attention_backend: 'fa3' would run one phase without SWAA"),
        ({"speculative_algorithm": "EAGLE"}, "speculative_algorithm: 'EAGLE' is not supported"),
        ({"enable_mis": True}, "enable_mis: multi-item scoring is not supported"),
        ({"json_model_override_args": "{}"}, "swaa: the 'swaa' attention backend needs a SWAA config"),
        ({"json_model_override_args": "[1]"}, "json_model_override_args: expected a JSON object"),
        ({"attention_backend": None, "prefill_attention_backend": "swaa"},
         "decode_attention_backend: unset (the default backend) would run one phase without SWAA"),
        ({"attention_backend": "flashinfer", "decode_attention_backend": "swaa", "prefill_attention_backend": "fa3"},
         "prefill_attention_backend: 'fa3' would run one phase without SWAA"),
    ],
)
def test_server_arg_refusals(kw, message):
    with pytest.raises(ValueError) as e:
        check_server_args(_server_args(**kw))
    assert str(e.value).startswith(message)


def test_mixed_chunk_allowed_with_and_without_fa_decode():
    assert check_server_args(_server_args(enable_mixed_chunk=True)) == DECIDED
    fa = SWAAConfig(64, 4, True, evict_window=False)
    assert check_server_args(_server_args(enable_mixed_chunk=True, json_model_override_args=with_config(None, fa))) == fa
    assert check_server_args(_server_args(decode_attention_backend="swaa")) == DECIDED
    both = _server_args(attention_backend=None, prefill_attention_backend="swaa", decode_attention_backend="swaa")
    assert check_server_args(both) == DECIDED


def test_an_undecided_eviction_default_is_refused_in_the_server():
    """The default of evict_window depends on the layer count; the launching process decides it. A config
    that reaches the server checks undecided is refused, naming the field, rather than guessed."""
    undecided = _server_args(json_model_override_args=with_config(None, SWAAConfig(64, 4)))
    with pytest.raises(ValueError, match="^evict_window: the swaa config reached the server undecided"):
        check_server_args(undecided)


def test_extend_batches_mark_their_prompt_lengths():
    """The ForwardBatch hook, called as HookRegistry calls the classmethod ((result, cls, batch,
    model_runner), by position or by name), marks an extend batch with its requests' prompt lengths;
    a decode batch needs none; the backend refuses an extend batch without the marking."""
    from attention_backends.backend import generated_from
    from attention_backends.planning import GENERATED_FROM_ATTR
    from swaa_sglang.serving import batch_marking

    (hook,) = [h for h in batch_marking.HOOKS if h.target.path.endswith("ForwardBatch.init_new")]
    mark = hook.wrapper()

    def fb(decode: bool):
        return types.SimpleNamespace(forward_mode=types.SimpleNamespace(is_decode_or_idle=lambda: decode),
                                     extend_seq_lens_cpu=[4, 1])

    batch = types.SimpleNamespace(reqs=[types.SimpleNamespace(origin_input_ids=[1, 2, 3]),
                                        types.SimpleNamespace(origin_input_ids=[1] * 5)])
    assert generated_from(mark(fb(False), object, batch, None)).tolist() == [3, 5]
    assert generated_from(mark(fb(False), object, batch=batch, model_runner=None)).tolist() == [3, 5]
    assert not hasattr(mark(fb(True), object, batch, None), GENERATED_FROM_ATTR)
    with pytest.raises(RuntimeError, match="without its requests' prompt lengths marked"):
        generated_from(fb(False))


@pytest.mark.parametrize(
    "facts, message",
    [
        (ModelFacts(28, 4096, use_mla=True, architecture="DeepseekV3ForCausalLM"),
         "model: DeepseekV3ForCausalLM uses MLA attention"),
        (ModelFacts(28, 4096, sliding_window=4095), "model: this model already has native sliding-window"),
        (ModelFacts(28, 4096, is_encoder_decoder=True), "model: this model is an encoder-decoder model"),
        (ModelFacts(28, 50), "keep_first: 100 sink tokens exceed the context length 50"),
        (ModelFacts(3, 4096), "non_sliding_layers: layer ids [5] are out of range"),
    ],
)
def test_model_refusals(facts, message):
    cfg = SWAAConfig(64, 100, non_sliding_layers=[1, 5], evict_window=False)
    with pytest.raises(ValueError) as e:
        check_model(cfg, facts)
    assert str(e.value).startswith(message)


def test_override_round_trip():
    cfg = SWAAConfig(128, 8, [0, 2], "every:4:1")
    assert config_from_override_args(with_config('{"a": 1}', cfg)) == cfg
    assert config_from_override_args('{"a": 1}') is None
    assert config_from_override_args(None) is None


RECIPES = sorted((Path(__file__).resolve().parents[1] / "launch").glob("*.yaml"))


@pytest.mark.slow
def test_every_recipe_is_a_valid_sglang_config():
    """Each launch/ recipe goes through SGLang's own --config parser and our start-up checks."""
    from swaa_sglang.config import PRESETS

    assert len(RECIPES) >= 9
    code = (
        "import json, sys\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "from sglang.srt.server_args import prepare_server_args\n"
        "model, recipes = sys.argv[1], sys.argv[2:]\n"
        "for recipe in recipes:\n"
        "    sa = prepare_server_args(['--config', recipe, '--model-path', model, '--load-format', 'dummy',\n"
        "                              '--device', 'cpu'])\n"
        "    print('RECIPE:' + json.dumps([recipe, sa.attention_backend, sa.json_model_override_args]))\n"
    )
    r = _run(code, QWEN3_CONFIG, *map(str, RECIPES))
    rows = [json.loads(ln[7:]) for ln in r.stdout.splitlines() if ln.startswith("RECIPE:")]
    assert len(rows) == len(RECIPES), r.stderr[-3000:]
    presets = [SWAAConfig(**fields) for _, fields in PRESETS.values()]
    for recipe, backend, override in rows:
        assert backend == "swaa", recipe
        # the server receives the preset with window eviction decided for the model (Qwen3-4B/8B: 36 layers)
        served = config_from_override_args(override)
        assert any(served == preset.with_eviction_resolved(36) for preset in presets), recipe
        assert served.evict_window is bool(served.windowed_layers(36)), recipe
