"""``python -m swaa_sglang.serving.bench``: SGLang's own benchmark tools with the plugin loaded (CPU, fresh processes).

The tools themselves need a GPU; here: the arguments reach both SGLang's ServerArgs (SWAA config
folded into the override, backend 'swaa' by default, vanilla when asked) and the tool's BenchArgs,
and a bad SWAA config, a bad flag, a missing tool or a missing GPU stops it with one line naming
what is wrong.

Importing SGLang costs ~20 s per process, so one subprocess parses every case in-process (the
tools' entry functions stubbed out, so a case that wrongly passes reports ``NO ERROR`` instead of
running a benchmark) while the real ``-m`` entry point runs beside it for the exit statuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launcher_subprocess import QWEN3_CONFIG

pytestmark = pytest.mark.slow  # every test here waits for processes that import SGLang

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--model-path", QWEN3_CONFIG, "--load-format", "dummy", "--device", "cpu"]
NO_CUDA = not torch.cuda.is_available()

# In one process: 'parse' cases report what reached ServerArgs and BenchArgs; 'main' cases run the
# wrapper's main() and report its exit status and what it wrote to stderr.
_BATCH = r"""
import contextlib, dataclasses, io, json, sys
import sglang.benchmark.one_batch, sglang.benchmark.offline_throughput

def not_run(*a, **k):
    raise RuntimeError("NO ERROR: the benchmark would have run")

sglang.benchmark.one_batch.main = not_run
sglang.benchmark.offline_throughput.throughput_test = not_run
from swaa_sglang.serving import bench
from swaa_sglang.serving.launcher import load_plugin, parse_server_args

load_plugin()
for case in json.loads(sys.argv[1]):
    out = {"id": case["id"]}
    if case["kind"] == "parse":
        parser, module = bench.build_parser(case["tool"])
        sa, args = parse_server_args(parser, case["argv"])
        ba = module.BenchArgs.from_cli_args(args)
        out.update(backend=sa.attention_backend, override=sa.json_model_override_args,
                   swaa_flags_left=sorted(k for k in vars(args) if k.startswith("swaa_")),
                   bench={k: v for k, v in dataclasses.asdict(ba).items()
                          if k in ("input_len", "output_len", "batch_size", "num_prompts", "profile")})
    else:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                bench.main(case["argv"])
            out.update(code=0, message="NO ERROR")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            message = "" if isinstance(e.code, int) or e.code is None else str(e.code)
            out.update(code=code, message=message)
        except Exception as e:
            out.update(code=None, message=f"{type(e).__name__}: {e}")
        out["stderr"] = err.getvalue()
    print("CASE:" + json.dumps(out), flush=True)
"""

PARSE_CASES = {
    "one-batch-balanced": ("one_batch", ["--swaa-preset", "balanced", "--swaa-keep-first", "64", "--batch-size", "1",
                                         "--input-len", "1024", "2048", "--output-len", "32"]),
    "one-batch-vanilla": ("one_batch", ["--attention-backend", "flashinfer", "--input-len", "512"]),
    "one-batch-profile": ("one_batch", ["--swaa-window", "64", "--profile"]),
    "offline": ("offline_throughput", ["--swaa-window", "512", "--num-prompts", "7"]),
}

# id -> (argv of the wrapper, exit status, text the error must contain)
MAIN_CASES = {
    "window-0": (["one_batch", *CPU, "--swaa-window", "0"], 1, "error: sliding_window_size: must be an integer >= 1"),
    "no-setting": (["one_batch", *CPU, "--attention-backend", "swaa"], 2, "give a SWAA setting: --swaa-preset NAME"),
    "tp": (["one_batch", *CPU, "--swaa-window", "64", "--tp-size", "2"], 1,
           "error: tp_size: 2; one_batch's spawned tensor-parallel workers never load the plugin; allowed: 1"),
    "no-tokenizer": (["offline_throughput", *CPU, "--swaa-window", "64", "--dataset-name", "random"], 1,
                     "error: tokenizer_path: '" + QWEN3_CONFIG + "' has no usable tokenizer"),
    "bad-preset": (["one_batch", *CPU, "--swaa-preset", "fast"], 2,
                   "python -m swaa_sglang.serving.bench one_batch: error: argument --swaa-preset: invalid choice: 'fast'"),
    "bad-tool-flag": (["one_batch", *CPU, "--swaa-window", "64", "--input-len", "many"], 2,
                      "error: argument --input-len: invalid int value: 'many'"),
}
if NO_CUDA:  # on a GPU host this case would be a valid benchmark
    MAIN_CASES["no-gpu"] = (["one_batch", "--model-path", QWEN3_CONFIG, "--load-format", "dummy",
                             "--swaa-window", "64"], 1, "error: swaa-sglang serves on NVIDIA GPUs (CUDA); none found")

# the real entry point: (argv, text stderr must contain)
ENTRY_CASES = {
    "no-tool": ([], "error: give a tool first; allowed: one_batch, offline_throughput"),
    "unknown-tool": (["bench_everything"], "error: unknown tool 'bench_everything'; give a tool first; allowed: one_batch"),
    "window-0": (["one_batch", *CPU, "--swaa-window", "0"], "error: sliding_window_size: must be an integer >= 1"),
}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def runs():
    cases = [{"id": k, "kind": "parse", "tool": tool, "argv": [*CPU, *argv]} for k, (tool, argv) in PARSE_CASES.items()]
    cases += [{"id": k, "kind": "main", "argv": argv} for k, (argv, _, _) in MAIN_CASES.items()]
    procs = {"batch": [sys.executable, "-c", _BATCH, json.dumps(cases)]}
    procs.update({k: [sys.executable, "-m", "swaa_sglang.serving.bench", *argv] for k, (argv, _) in ENTRY_CASES.items()})
    started = {k: subprocess.Popen(v, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
               for k, v in procs.items()}
    done = {}
    for k, p in started.items():
        out, err = p.communicate(timeout=900)
        done[k] = (p.returncode, out, err)
    rc, out, err = done.pop("batch")
    rows = {}
    for line in out.splitlines():
        if line.startswith("CASE:"):
            row = json.loads(line[5:])
            rows[row["id"]] = row
    assert len(rows) == len(cases), (rc, err[-3000:])
    return rows, done


def test_one_batch_gets_the_swaa_config_and_its_own_arguments(runs):
    out = runs[0]["one-batch-balanced"]
    assert out["backend"] == "swaa"
    swaa = json.loads(out["override"])["swaa"]
    assert swaa["sliding_window_size"] == 2048 and swaa["keep_first"] == 64 and swaa["force_fa_decode"] is True
    assert swaa["non_sliding_layers"] == "odd"
    assert {k: v for k, v in out["bench"].items() if k != "profile"} == {
        "batch_size": [1], "input_len": [1024, 2048], "output_len": [32]}
    assert out["bench"]["profile"] is False
    assert out["swaa_flags_left"] == []  # the tool's namespace carries no SWAA flags


def test_vanilla_through_the_same_tool(runs):
    out = runs[0]["one-batch-vanilla"]
    assert out["backend"] == "flashinfer" and "swaa" not in json.loads(out["override"] or "{}")


def test_tool_flags_reach_bench_args(runs):
    out = runs[0]["one-batch-profile"]
    assert out["bench"]["profile"] is True and json.loads(out["override"])["swaa"]["sliding_window_size"] == 64


def test_offline_throughput_arguments(runs):
    out = runs[0]["offline"]
    assert json.loads(out["override"])["swaa"]["sliding_window_size"] == 512 and out["bench"]["num_prompts"] == 7


@pytest.mark.parametrize("case", list(MAIN_CASES))
def test_refusals_name_what_is_wrong(runs, case):
    row = runs[0][case]
    _, code, message = MAIN_CASES[case]
    assert row["code"] == code, row
    assert message in row["message"] + row["stderr"], row
    if code == 2:  # argparse: the short usage, the error and a hint; not every SGLang option
        lines = row["stderr"].strip().splitlines()
        assert len(lines) == 3 and lines[0].startswith("usage: python -m swaa_sglang.serving.bench"), row["stderr"]
        assert lines[2] == "(run python -m swaa_sglang.serving.bench one_batch --help for every option)", lines
    else:
        assert row["message"].startswith("error: ") and "\n" not in row["message"], row


@pytest.mark.parametrize("case", list(ENTRY_CASES))
def test_the_entry_point_exits_nonzero_with_the_message(runs, case):
    rc, out, err = runs[1][case]
    assert rc != 0 and ENTRY_CASES[case][1] in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
