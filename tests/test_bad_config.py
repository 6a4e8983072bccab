"""Bad configuration on every path stops the server at start, naming the field, the value and what is allowed.

Paths: ``SWAAConfig.from_dict`` / YAML and JSON files (in-process), and, in real
subprocesses with the plugin loaded through SGLang's loader (CPU, config.json-only
models, nothing is ever loaded onto a device):

* ``python -m swaa_sglang.launch_server`` with ``--swaa-*`` flags, presets with overrides, config files;
* ``python -m sglang.launch_server --attention-backend swaa --json-model-override-args ...``;
* ``sglang.Engine(**kwargs)``.

The launcher's own errors are checked beside them: a bad flag gives argparse's short usage, and a
valid config on a machine without a CUDA GPU gives one line pointing to the HF reference, after
the field checks (which give their message whatever the device).

Importing SGLang costs ~10-30 s per process, so one subprocess tries every case of the
three entry points in-process (with the server launch stubbed out, so a case that
wrongly passes reports ``NO ERROR`` instead of starting a server), and two more (three
without a CUDA GPU) run the real ``-m`` entry points to check the exit status and stderr.
They start together; the tests that read them are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from swaa_sglang import SWAAConfig

ROOT = Path(__file__).resolve().parents[1]
QWEN3 = str(ROOT / "benchmarks" / "models" / "qwen3-0.6b")  # 28 layers, context 40960
QWEN3_LAYERS, QWEN3_CONTEXT = 28, 40960

# (id, swaa dict, field, value as it must appear in the message, what is allowed: a fragment of the message)
CONFIG_CASES = [
    ("window-0", {"sliding_window_size": 0}, "sliding_window_size", "got 0", "integer >= 1"),
    ("window-negative", {"sliding_window_size": -5}, "sliding_window_size", "got -5", "integer >= 1"),
    ("window-string", {"sliding_window_size": "2048"}, "sliding_window_size", "got '2048'", "integer >= 1"),
    ("sinks-negative", {"sliding_window_size": 64, "keep_first": -1}, "keep_first", "got -1", "integer >= 0"),
    ("sinks-over-context", {"sliding_window_size": 64, "keep_first": 50000}, "keep_first", "50000",
     f"allowed 0..{QWEN3_CONTEXT}"),
    ("full-layer-duplicate", {"sliding_window_size": 64, "non_sliding_layers": [3, 1, 3]}, "non_sliding_layers",
     "layer 3 is listed twice", "each layer id once"),
    ("fa-layer-duplicate", {"sliding_window_size": 64, "force_fa_decode": "2,2"}, "force_fa_decode",
     "layer 2 is listed twice", "each layer id once"),
    ("full-layer-unknown", {"sliding_window_size": 64, "non_sliding_layers": [1, 40]}, "non_sliding_layers",
     "[40]", f"allowed ids 0..{QWEN3_LAYERS - 1}"),
    ("fa-layer-unknown", {"sliding_window_size": 64, "force_fa_decode": [28]}, "force_fa_decode", "[28]",
     f"allowed ids 0..{QWEN3_LAYERS - 1}"),
    ("full-layer-negative", {"sliding_window_size": 64, "non_sliding_layers": [-1]}, "non_sliding_layers",
     "got -1", "layer ids must be >= 0"),
    ("full-pattern-offset", {"sliding_window_size": 64, "non_sliding_layers": "every:4:30"}, "non_sliding_layers",
     "every:4:30", f"allowed offsets 0..{QWEN3_LAYERS - 1}"),
    ("fa-names-full-layers", {"sliding_window_size": 64, "force_fa_decode": [0, 1, 2], "non_sliding_layers": "odd"},
     "force_fa_decode", "layers [1]", "allowed: sliding layers only"),
    ("unknown-field", {"window": 64}, "window", "window", "allowed fields: sliding_window_size"),
    ("unknown-preset", {"preset": "fast"}, "preset", "'fast'", "allowed: full, window-2k"),
    ("preset-bad-override", {"preset": "balanced", "keep_first": -3}, "keep_first", "got -3", "integer >= 0"),
]


def _assert_names(message: str, field: str, value: str, allowed: str) -> None:
    assert message.startswith(f"{field}: "), message
    assert value in message, (value, message)
    assert allowed in message, (allowed, message)


# -- in-process: dicts and files ------------------------------------------------------------------------------
def _load_and_validate(load) -> str:
    with pytest.raises(ValueError) as e:
        load().validate(QWEN3_LAYERS, context_length=QWEN3_CONTEXT)
    return str(e.value)


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_dict_yaml_json(case, tmp_path):
    _, swaa, field, value, allowed = case
    _assert_names(_load_and_validate(lambda: SWAAConfig.from_dict(swaa)), field, value, allowed)
    for name, text in (("c.yaml", yaml.safe_dump(swaa)), ("n.yml", yaml.safe_dump({"swaa": swaa})),
                       ("c.json", json.dumps(swaa))):
        (tmp_path / name).write_text(text)
        _assert_names(_load_and_validate(lambda: SWAAConfig.from_file(tmp_path / name)), field, value, allowed)


def test_unreadable_config_file(tmp_path):
    """A missing file, a directory and broken YAML are one-line ValueErrors naming swaa_config."""
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("swaa: {sliding_window_size: 64\n")
    for path, value in ((tmp_path / "missing.json", "missing.json"), (tmp_path, "cannot read"),
                        (bad_yaml, "not valid YAML")):
        with pytest.raises(ValueError) as e:
            SWAAConfig.from_file(path)
        _assert_names(str(e.value), "swaa_config", value, "allowed: a")
    with pytest.raises(ValueError, match="invalid JSON"):  # broken JSON was already a ValueError
        (tmp_path / "bad.json").write_text("{not json")
        SWAAConfig.from_file(tmp_path / "bad.json")


def test_argument_errors_print_the_short_usage(capsys):
    """The launcher's parser (here with the SWAA flags only, no SGLang): usage line, error, hint; exit status 2."""
    from swaa_sglang.cli import add_swaa_args
    from swaa_sglang.serving.launcher import PROG, ShortUsageParser, short_usage

    parser = ShortUsageParser(prog=PROG, usage=short_usage(PROG))
    add_swaa_args(parser)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--swaa-preset", "fast"])
    assert e.value.code == 2
    usage, error, hint = capsys.readouterr().err.strip().splitlines()
    assert usage == f"usage: {short_usage(PROG)}"
    assert error.startswith(f"{PROG}: error: argument --swaa-preset: invalid choice: 'fast'"), error
    assert hint == f"(run {PROG} --help for every option)"


@pytest.mark.parametrize("device, cuda", [(None, True), ("cuda", True), ("cuda:1", True), ("auto", True),
                                          ("cpu", False), ("xpu", False), ("npu", False)])
def test_which_devices_need_cuda(device, cuda):
    from swaa_sglang.serving.launcher import wants_cuda

    assert wants_cuda(device) is cuda


# -- subprocesses: the three entry points -----------------------------------------------------------------------
BATCH = r"""
import contextlib, io, json, sys
import sglang
import sglang.launch_server as sgl_launch
from sglang.srt.plugins import load_plugins

class Launched(Exception):
    pass

def no_launch(*a, **k):
    raise Launched("NO ERROR: the server would have started")

sgl_launch.run_server = no_launch
sglang.Engine._launch_subprocesses = staticmethod(no_launch)
load_plugins()
from sglang.srt.server_args import prepare_server_args
from swaa_sglang.launch_server import main

def report(cid, fn):
    out = {"id": cid}
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            fn()
        out.update(kind="none", message="NO ERROR")
    except SystemExit as e:
        out.update(kind="exit", code=e.code if isinstance(e.code, int) else 1, message=str(e.code))
    except BaseException as e:
        out.update(kind=type(e).__name__, message=str(e))
    out["stderr"] = err.getvalue()
    print("CASE:" + json.dumps(out), flush=True)

for case in json.loads(sys.argv[1]):
    path, cid, arg = case["path"], case["id"], case["arg"]
    if path == "swaa_cli":
        report(cid, lambda: main(arg))
    elif path == "sglang_cli":
        report(cid, lambda: prepare_server_args(arg))
    else:
        report(cid, lambda: sglang.Engine(**arg))
"""

CPU = ["--load-format", "dummy", "--device", "cpu"]
NO_CUDA = not torch.cuda.is_available()
NO_CUDA_LINE = ("error: swaa-sglang serves on NVIDIA GPUs (CUDA); none found. For CPU use, run the HF reference: "
                "python -m swaa_sglang.hf")
MLA_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 256,
    "intermediate_size": 512, "moe_intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 4, "kv_lora_rank": 64, "q_lora_rank": None, "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16, "v_head_dim": 32, "n_routed_experts": 4, "n_shared_experts": 1,
    "num_experts_per_tok": 2, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "vocab_size": 1000,
    "max_position_embeddings": 4096, "rope_theta": 10000, "torch_dtype": "bfloat16",
}

# server-level refusals: (id, extra sglang args as a dict of Engine kwargs, field, value, allowed)
SERVER_CASES = [
    ("speculative", {"speculative_algorithm": "EAGLE"}, "speculative_algorithm", "'EAGLE'", "allowed: none"),
    ("decode-backend-conflict", {"decode_attention_backend": "triton"}, "decode_attention_backend", "'triton'",
     "leave it unset or set it to 'swaa'"),
    ("prefill-backend-conflict", {"prefill_attention_backend": "fa3"}, "prefill_attention_backend", "'fa3'",
     "leave it unset or set it to 'swaa'"),
    ("swaa-prefill-only", {"attention_backend": None, "prefill_attention_backend": "swaa"},
     "decode_attention_backend", "unset", "allowed: 'swaa' for both phases"),
    ("multi-item-scoring", {"enable_mis": True}, "enable_mis", "multi-item scoring", "allowed: off"),
    ("deterministic", {"enable_deterministic_inference": True}, "enable_deterministic_inference",
     "no batch-invariant", "allowed: off"),
    ("mla-model", {"model_path": "MLA"}, "model", "DeepseekV3ForCausalLM", "allowed: models with standard"),
]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _swaa_cli_cases(tmp: Path) -> list[dict]:
    """python -m swaa_sglang.launch_server: flags, presets + overrides, config files."""
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("preset: balanced\nnon_sliding_layers: [1, 1]\n")
    flags = {
        "window-0": ["--swaa-window", "0"],
        "window-negative": ["--swaa-window", "-5"],
        "sinks-negative": ["--swaa-window", "64", "--swaa-keep-first", "-1"],
        "sinks-over-context": ["--swaa-window", "64", "--swaa-keep-first", "50000"],
        "full-layer-duplicate": ["--swaa-window", "64", "--swaa-full-layers", "3,1,3"],
        "fa-layer-duplicate": ["--swaa-window", "64", "--swaa-fa-decode", "2,2"],
        "full-layer-unknown": ["--swaa-window", "64", "--swaa-full-layers", "1,40"],
        "fa-layer-unknown": ["--swaa-window", "64", "--swaa-fa-decode", "28"],
        "full-pattern-offset": ["--swaa-window", "64", "--swaa-full-layers", "every:4:30"],
        "fa-names-full-layers": ["--swaa-window", "64", "--swaa-fa-decode", "0-2", "--swaa-full-layers", "odd"],
        "preset-bad-override": ["--swaa-preset", "balanced", "--swaa-keep-first", "-3"],
        "preset-bad-window": ["--swaa-preset", "sink100-2k", "--swaa-window", "0"],
        "preset-sinks-over-context": ["--swaa-preset", "balanced", "--context-length", "64"],
        "preset-fa-names-full": ["--swaa-preset", "balanced", "--swaa-fa-decode", "1"],
        "config-file-duplicate": ["--swaa-config", str(bad_yaml)],
        "config-file-missing": ["--swaa-config", str(tmp / "missing.yaml")],
    }
    server = {c[0]: [a for k, v in c[1].items() if v is not None for a in ((_flag(k),) if v is True else (_flag(k), v))]
              for c in SERVER_CASES}
    server["mla-model"] = []
    cases = [{"path": "swaa_cli", "id": f"swaa_cli:{k}", "arg": ["--model-path", QWEN3, *CPU, *v]}
             for k, v in flags.items()]
    # argparse errors and the device: no --device here, so SGLang would auto-detect one
    cases.append({"path": "swaa_cli", "id": "swaa_cli:bad-preset", "arg": ["--model-path", QWEN3, "--swaa-preset", "fast"]})
    cases.append({"path": "swaa_cli", "id": "swaa_cli:any-device-full-layer-unknown",
                  "arg": ["--model-path", QWEN3, "--load-format", "dummy", "--swaa-window", "64",
                          "--swaa-full-layers", "999"]})
    for cid, extra in server.items():
        model = str(tmp / "mla") if cid == "mla-model" else QWEN3
        if cid == "swaa-prefill-only":
            continue  # this launcher defaults --attention-backend to swaa; covered on the other two paths
        cases.append({"path": "swaa_cli", "id": f"swaa_cli:{cid}",
                      "arg": ["--model-path", model, *CPU, "--swaa-window", "64", *extra]})
    return cases


def _override_cases(tmp: Path, path: str) -> list[dict]:
    """sglang.launch_server (argv) or sglang.Engine (kwargs) with --json-model-override-args."""
    cases = []
    for cid, swaa, *_ in CONFIG_CASES:
        kw = {"model_path": QWEN3, "attention_backend": "swaa",
              "json_model_override_args": json.dumps({"rope_theta": 1000000, "swaa": swaa})}
        cases.append((cid, kw))
    good = json.dumps({"swaa": {"sliding_window_size": 64}})
    for cid, extra, *_ in SERVER_CASES:
        kw = {"model_path": QWEN3, "attention_backend": "swaa", "json_model_override_args": good, **extra}
        if cid == "mla-model":
            kw["model_path"] = str(tmp / "mla")
        cases.append((cid, {k: v for k, v in kw.items() if v is not None}))
    cases.append(("missing-config", {"model_path": QWEN3, "attention_backend": "swaa"}))
    out = []
    for cid, kw in cases:
        if path == "engine":
            out.append({"path": path, "id": f"{path}:{cid}", "arg": {**kw, "load_format": "dummy", "device": "cpu"}})
        else:
            argv = [a for k, v in kw.items() for a in ((_flag(k),) if v is True else (_flag(k), v))]
            out.append({"path": path, "id": f"{path}:{cid}", "arg": [*argv, *CPU]})
    return out


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "mla").mkdir()
    (tmp / "mla" / "config.json").write_text(json.dumps(MLA_CONFIG))
    cases = _swaa_cli_cases(tmp) + _override_cases(tmp, "sglang_cli") + _override_cases(tmp, "engine")
    procs = {
        "batch": [sys.executable, "-c", BATCH, json.dumps(cases)],
        "swaa_main": [sys.executable, "-m", "swaa_sglang.launch_server", "--model-path", QWEN3, *CPU,
                      "--swaa-preset", "balanced", "--swaa-window", "-7"],
        "sglang_main": [sys.executable, "-m", "sglang.launch_server", "--model-path", QWEN3, *CPU,
                        "--attention-backend", "swaa", "--json-model-override-args",
                        json.dumps({"swaa": {"sliding_window_size": 64, "non_sliding_layers": [5, 99]}})],
    }
    if NO_CUDA:  # without --device: SGLang's device detection finds nothing
        procs["swaa_main_no_gpu"] = [sys.executable, "-m", "swaa_sglang.launch_server", "--model-path", QWEN3,
                                     "--load-format", "dummy", "--swaa-preset", "balanced"]
    started = {k: subprocess.Popen(v, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                                   cwd=tmp) for k, v in procs.items()}
    done = {}
    for k, p in started.items():
        out, err = p.communicate(timeout=900)
        done[k] = (p.returncode, out, err)
    rc, out, err = done["batch"]
    results = {}
    for line in out.splitlines():
        if line.startswith("CASE:"):
            row = json.loads(line[5:])
            results[row["id"]] = row
    assert len(results) == len(cases), (rc, err[-3000:])
    return results, done


EXPECTED = {c[0]: c[2:] for c in CONFIG_CASES}
EXPECTED.update({c[0]: c[2:] for c in SERVER_CASES})
EXPECTED.update({
    "preset-bad-window": ("sliding_window_size", "got 0", "integer >= 1"),
    "preset-sinks-over-context": ("keep_first", "100 sink tokens exceed the context length 64", "allowed 0..64"),
    "preset-fa-names-full": ("force_fa_decode", "layers [1]", "allowed: sliding layers only"),
    "config-file-duplicate": ("non_sliding_layers", "layer 1 is listed twice", "each layer id once"),
    "missing-config": ("swaa", "needs a SWAA config", "--json-model-override-args"),
    "config-file-missing": ("swaa_config", "missing.yaml", "allowed: a readable JSON or YAML file"),
    "any-device-full-layer-unknown": ("non_sliding_layers", "[999]", f"allowed ids 0..{QWEN3_LAYERS - 1}"),
})
NOT_FIELD_ERRORS = {"bad-preset"}  # checked on its own below


@pytest.mark.slow
def test_every_bad_case_is_refused_at_start_on_every_path(runs):
    results, _ = runs
    checked = 0
    for cid, row in results.items():
        path, name = cid.split(":", 1)
        if name in NOT_FIELD_ERRORS:
            continue
        field, value, allowed = EXPECTED[name]
        message = row["message"]
        if path == "swaa_cli":
            # main() exits with "error: <message>" (a non-zero exit status)
            assert row["kind"] == "exit", row
            assert message.startswith("error: "), row
            message = message[len("error: "):]
        else:
            assert row["kind"] == "ValueError", row
        _assert_names(message, field, value, allowed)
        checked += 1
    assert checked == len(results) - len(NOT_FIELD_ERRORS & {c.split(":", 1)[1] for c in results}) >= 3 * len(CONFIG_CASES)


@pytest.mark.slow
def test_a_bad_flag_prints_the_short_usage_not_every_option(runs):
    """argparse's own errors: exit status 2, a one-line usage, the error and a hint (not ~480 lines of options)."""
    row = runs[0]["swaa_cli:bad-preset"]
    assert row["kind"] == "exit" and row["code"] == 2, row
    usage, error, hint = row["stderr"].strip().splitlines()
    assert usage.startswith("usage: python -m swaa_sglang.launch_server [--swaa-preset NAME | --swaa-config FILE]")
    assert error.startswith("python -m swaa_sglang.launch_server: error: argument --swaa-preset: invalid choice: "
                            "'fast' (choose from 'full', 'window-2k'"), error
    assert hint == "(run python -m swaa_sglang.launch_server --help for every option)"


@pytest.mark.slow
@pytest.mark.skipif(not NO_CUDA, reason="checks the message shown on a machine without a GPU; this one has a CUDA GPU")
def test_no_gpu_is_one_line_after_the_config_checks(runs):
    """A valid config without a CUDA GPU: one line pointing to the HF reference, instead of SGLang's traceback.
    The field checks come first: ``any-device-full-layer-unknown`` (no --device either) gets its field message."""
    rc, out, err = runs[1]["swaa_main_no_gpu"]
    assert rc == 1, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(NO_CUDA_LINE), err[-3000:]
    assert "Traceback" not in err and "No accelerator" not in err, err[-3000:]


@pytest.mark.slow
def test_real_entry_points_exit_nonzero_with_the_message(runs):
    _, done = runs
    rc, out, err = done["swaa_main"]
    assert rc != 0 and "error: sliding_window_size: must be an integer >= 1" in err and "got -7" in err, err[-3000:]
    rc, out, err = done["sglang_main"]
    assert rc != 0, err[-3000:]
    assert "ValueError: non_sliding_layers: layer ids [99] are out of range; this model has 28 layers" in err, err[-3000:]
    for _, (_, out, err) in done.items():
        assert "Load weight" not in err and "Launched" not in out + err  # nothing got as far as a model load
