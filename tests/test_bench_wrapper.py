"""``python -m swaa_sglang.serving.bench``: SGLang's own benchmark tools with the plugin loaded (CPU, fresh processes).

The tools themselves need a GPU; here: the arguments reach both SGLang's ServerArgs (SWAA config
folded into the override, backend 'swaa' by default, vanilla when asked) and the tool's BenchArgs,
and a bad SWAA config or a missing tool stops it with one line naming what is wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from launcher_subprocess import QWEN3_CONFIG

CPU = ["--model-path", QWEN3_CONFIG, "--load-format", "dummy", "--device", "cpu"]

_PARSE = (
    "import dataclasses, json, sys\n"
    "from swaa_sglang.serving.bench import build_parser\n"
    "from swaa_sglang.launch_server import load_plugin, parse_server_args\n"
    "load_plugin()\n"
    "parser, module = build_parser(sys.argv[1])\n"
    "sa, args = parse_server_args(parser, sys.argv[2:])\n"
    "ba = module.BenchArgs.from_cli_args(args)\n"
    "print('OUT:' + json.dumps({'backend': sa.attention_backend, 'override': sa.json_model_override_args,\n"
    "                           'bench': {k: v for k, v in dataclasses.asdict(ba).items()\n"
    "                                     if k in ('input_len', 'output_len', 'batch_size', 'num_prompts')}}))\n"
)


def _parse(tool: str, *argv: str) -> dict:
    r = subprocess.run([sys.executable, "-c", _PARSE, tool, *CPU, *argv], capture_output=True, text=True, timeout=600)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("OUT:")]
    assert r.returncode == 0 and line, r.stderr[-3000:]
    return json.loads(line[-1][4:])


def test_one_batch_gets_the_swaa_config_and_its_own_arguments():
    out = _parse("one_batch", "--swaa-preset", "balanced", "--swaa-keep-first", "64", "--batch-size", "1",
                 "--input-len", "1024", "2048", "--output-len", "32")
    assert out["backend"] == "swaa"
    swaa = json.loads(out["override"])["swaa"]
    assert swaa["sliding_window_size"] == 2048 and swaa["keep_first"] == 64 and swaa["force_fa_decode"] is True
    assert swaa["non_sliding_layers"] == "odd"
    assert out["bench"] == {"batch_size": [1], "input_len": [1024, 2048], "output_len": [32]}


def test_vanilla_through_the_same_tool():
    out = _parse("one_batch", "--attention-backend", "flashinfer", "--input-len", "512")
    assert out["backend"] == "flashinfer" and "swaa" not in json.loads(out["override"] or "{}")


def test_offline_throughput_arguments():
    out = _parse("offline_throughput", "--swaa-window", "512", "--num-prompts", "7")
    assert json.loads(out["override"])["swaa"]["sliding_window_size"] == 512 and out["bench"]["num_prompts"] == 7


@pytest.mark.parametrize("argv, message", [
    ([], "error: give a tool first; allowed: one_batch, offline_throughput"),
    (["bench_everything"], "error: unknown tool 'bench_everything'; give a tool first; allowed: one_batch"),
    (["one_batch", *CPU, "--swaa-window", "0"], "error: sliding_window_size: must be an integer >= 1"),
    (["one_batch", *CPU, "--attention-backend", "swaa"], "give a SWAA setting: --swaa-preset NAME"),
    (["one_batch", *CPU, "--swaa-window", "64", "--tp-size", "2"],
     "error: tp_size: 2; one_batch's spawned tensor-parallel workers never load the plugin; allowed: 1"),
    (["offline_throughput", *CPU, "--swaa-window", "64", "--dataset-name", "random"],
     "error: tokenizer_path: '" + QWEN3_CONFIG + "' has no usable tokenizer"),
])
def test_refusals_name_what_is_wrong(argv, message):
    r = subprocess.run([sys.executable, "-m", "swaa_sglang.serving.bench", *argv], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and message in r.stderr, r.stderr[-3000:]


def test_help_lists_the_swaa_flags_and_the_tool_arguments():
    r = subprocess.run([sys.executable, "-m", "swaa_sglang.serving.bench", "one_batch", "--help"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for flag in ("--swaa-preset", "--swaa-window", "--input-len", "--output-len", "--profile", "--attention-backend"):
        assert flag in r.stdout, flag
