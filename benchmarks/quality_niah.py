"""Needle-in-a-haystack accuracy of SWAA settings, the needle inside or outside the sliding window.

The task (``niah/task.py``): chat prompts of about ``--context-lengths`` tokens of Paul Graham
essays with one needle, "The special magic number for <city> is <7-digit number>.", placed where
every answering query sees it through the window (inside) or where none does (outside), paired
by index; a sample is correct when the number appears in the greedy answer (``niah/scoring.py``).

Runners:

* ``hf`` (default, ``niah/hf_runner.py``): ``swaa_sglang.hf`` on the embedded SmolLM2-135M-Instruct
  (or ``--model-path``), float32 on CPU or bfloat16 on GPU; settings that differ only in
  ``force_fa_decode`` share one prefill. ``--attention blockwise`` (the default) runs
  ``swaa_sglang.hf``'s "swaa_blockwise" attention (memory bounded by the keys each query block
  sees), ``--attention reference`` its eager-exact "swaa" one (O(N^2) memory, about 160 s for one
  4K prefill on 2 CPU cores); ``--verify-tokens N`` compares the two on real weights first.
* ``server`` (``niah/server_runner.py``): a running OpenAI-compatible server on loopback,
  ``/v1/completions`` with the prompt as token ids or text, or ``/v1/chat/completions``; the server
  runs one SWAA config: name it with ``--server-setting``, record it with ``--server-swaa``.
* ``launch``: one server per distinct config, started here one after another (``python -m
  swaa_sglang.launch_server --model-path M --swaa-config FILE``, or stock SGLang's
  ``--attention-backend flashinfer`` for full attention); each server's log is kept next to ``--out``.

Examples::

    python benchmarks/quality_niah.py --quick --out /tmp/q.json
    python benchmarks/quality_niah.py --windows 512 --samples 12 --out quality.json --render
    python benchmarks/quality_niah.py --runner server --server-url http://127.0.0.1:30000 \\
        --server-setting sw+sink+fa+odd --server-swaa '{"preset": "balanced"}' --windows 2048 \\
        --context-lengths 16384 --out q_server.json
    python benchmarks/quality_niah.py --runner launch --windows 512 --samples 11 \\
        --launch-args "--mem-fraction-static 0.5" --out q_sglang.json --render
    python benchmarks/render_quality.py q.json   # markdown table + PNG next to the JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(_REPO))

from common import PartialWriter, add_launch_args, make_parser, package_version  # noqa: E402
from niah.benchmark import machine_info, run_benchmark  # noqa: E402
from niah.scoring import summarize  # noqa: E402
from niah.settings import ALLOWED_SETTINGS, DEFAULT_SETTINGS, Setting, build_settings  # noqa: E402
from niah.task import (  # noqa: E402
    DEFAULT_CONTEXT_LENGTH, DEFAULT_MAX_NEW_TOKENS, DEFAULT_OUTSIDE_DEPTHS, DEFAULT_SINKS, DEFAULT_WINDOWS, NEEDLE,
    POSITIONS, QUESTION, Corpus, make_sample,
)
from swaa_sglang.config import SWAAConfig  # noqa: E402

logger = logging.getLogger("quality_niah")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, prog="python benchmarks/quality_niah.py")
    p.add_argument("--runner", choices=("hf", "server", "launch"), default="hf",
                   help="hf: the HF reference here; server: a running server (one setting); launch: start one "
                   "server per setting here, one after another")
    p.add_argument("--context-lengths", default=str(DEFAULT_CONTEXT_LENGTH), help="comma-separated prompt lengths")
    p.add_argument("--windows", default=",".join(map(str, DEFAULT_WINDOWS)), help="comma-separated window sizes W")
    p.add_argument("--sinks", type=int, default=DEFAULT_SINKS, help="keep_first of the +sink settings")
    p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS), help=f"comma-separated: {ALLOWED_SETTINGS}")
    p.add_argument("--positions", default=",".join(POSITIONS), help="needle positions: inside, outside")
    p.add_argument("--samples", type=int, default=10, help="samples per (context, window, position)")
    p.add_argument(
        "--outside-depths",
        default=",".join(map(str, DEFAULT_OUTSIDE_DEPTHS)),
        help="needle start / prompt length for outside samples, cycled over sample indices",
    )
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--no-answer-prefix", action="store_true", help="let the model answer without a prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-minutes",
        type=float,
        help="time budget: start no new sample index after this many minutes (cells stay balanced)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1024 tokens, window 256, 2 samples, 3 settings")
    p.add_argument("--out", help="results JSON (default: print a summary only)")
    p.add_argument("--render", action="store_true", help="also write the markdown table and PNG next to --out")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("hf runner")
    g.add_argument("--model-path", help="HF model directory (default: the embedded SmolLM2-135M-Instruct)")
    g.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    g.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="default: float32 on CPU, bfloat16 on GPU"
    )
    g.add_argument("--attention", choices=("blockwise", "reference"), default="blockwise")
    g.add_argument(
        "--verify-tokens",
        type=int,
        default=0,
        help="before the run, compare blockwise and reference attention (greedy answers, logits) on "
        "one inside sample of this many tokens, window a quarter of it, all settings",
    )
    g = p.add_argument_group("server runner")
    g.add_argument("--server-url", default="http://127.0.0.1:30000")
    g.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    g.add_argument("--prompt-format", choices=("ids", "text"), default="ids", help="/v1/completions prompt")
    g.add_argument("--server-model", help="model name in requests (default: the first of /v1/models)")
    g.add_argument("--server-setting", default="server", help="a name for the server's SWAA config")
    g.add_argument("--server-swaa", default="{}", help="the server's SWAA config as JSON (recorded)")
    g.add_argument("--tokenizer", help="tokenizer directory for the server runner (default: --model-path or SmolLM2)")
    g = p.add_argument_group("launch runner (also uses --model-path, --endpoint, --prompt-format)")
    g.add_argument("--launch-args", default="", help="extra server flags, e.g. '--mem-fraction-static 0.5'")
    add_launch_args(g)
    return p


@dataclass(frozen=True)
class Plan:
    """The parsed task lists of one run."""

    lengths: list[int]
    windows: list[int]
    positions: list[str]
    depths: list[float]
    names: list[str]

    def settings_for(self, window: int, sinks: int) -> list[Setting]:
        return build_settings(window, sinks, self.names)


def parse_plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    """The comma lists, ``--quick`` applied; a parser error names a bad setting or position."""
    if args.quick:
        args.context_lengths, args.windows, args.samples = "1024", "256", 2
        if args.settings == parser.get_default("settings"):
            args.settings = "full,sw,sw+sink+fa+odd"

    def items(text: str) -> list[str]:
        return [x.strip() for x in text.split(",") if x.strip()]

    plan = Plan([int(x) for x in items(args.context_lengths)], [int(x) for x in items(args.windows)],
                items(args.positions), [float(x) for x in items(args.outside_depths)], items(args.settings))
    try:
        for window in plan.windows:
            for s in plan.settings_for(window, args.sinks):
                # needles are placed inside or outside the sweep's window: a setting with a window of its
                # own (a preset, a file) would be scored against the wrong one
                if s.placement_window(window) != window:
                    raise ValueError(f"settings: {s.name} has its own window {s.placement_window(window)}, and "
                                     f"needles are placed for --windows {window}; allowed: --windows "
                                     f"{s.placement_window(window)} for it, or a window-relative setting")
        for pos in plan.positions:
            if pos not in POSITIONS:
                raise ValueError(f"positions: unknown {pos!r}; allowed: {POSITIONS}")
    except ValueError as e:
        message = str(e)
        parser.error(message if message.startswith("positions:") else f"--settings: {message.removeprefix('settings: ')}")
    return plan


def make_runner(args: argparse.Namespace, plan: Plan) -> tuple[Any, Any, str | None, Callable[[int], list[Setting]]]:
    """(runner, tokenizer, model path, settings per window); the launch runner has no runner object."""
    from transformers import AutoTokenizer

    from swaa_sglang.models import default_model_path

    if args.runner == "hf":
        from niah.hf_runner import HFRunner

        runner = HFRunner.load(args.model_path, args.device, args.dtype, args.max_new_tokens, args.attention)
        return runner, runner.tokenizer, runner.model_path, lambda w: plan.settings_for(w, args.sinks)
    if args.runner == "launch":
        # the embedded model as the GPU host provisions it (a carried GGUF), else from its package
        model_path = args.model_path or default_model_path(os.environ.get("SWAA_SMOLLM2_SOURCE"))
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or model_path)
        return None, tokenizer, model_path, lambda w: plan.settings_for(w, args.sinks)
    from niah.server_runner import ServerRunner

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model_path or default_model_path())
    setting = Setting(args.server_setting, "the server's config", SWAAConfig.from_dict(json.loads(args.server_swaa)))
    runner = ServerRunner(args.server_url, setting, args.max_new_tokens, args.endpoint, args.prompt_format,
                          args.server_model)
    return runner, tokenizer, args.model_path, lambda w: [setting]


def verify(args: argparse.Namespace, runner: Any, tokenizer: Any, corpus: Corpus, plan: Plan,
           settings_for: Callable[[int], list[Setting]]) -> dict[str, Any]:
    """Blockwise against reference attention on one inside sample of ``--verify-tokens``, window a quarter of it."""
    from niah.hf_runner import verify_blockwise

    window = args.verify_tokens // 4
    sample = make_sample(tokenizer, corpus, args.verify_tokens, window, "inside", 0, args.seed + 1,
                         args.max_new_tokens, plan.depths, not args.no_answer_prefix)
    t0 = time.time()
    report = {"sample": sample.describe(), "window": window,
              "settings": verify_blockwise(runner, sample, settings_for(window))}
    report["seconds"] = round(time.time() - t0, 1)
    logger.info("blockwise vs reference: %s", json.dumps(report["settings"]))
    return report


def run_all(args: argparse.Namespace, plan: Plan, runner: Any, tokenizer: Any, model_path: str | None, corpus: Corpus,
            settings_for: Callable[[int], list[Setting]], keep: Callable[[dict], None],
            deadline: float | None, started: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every answer of the run, and what answered them."""
    if args.runner != "launch":
        records = run_benchmark(runner, tokenizer, corpus, plan.lengths, plan.windows, settings_for, args.samples,
                                args.seed, args.max_new_tokens, plan.positions, plan.depths, not args.no_answer_prefix,
                                progress=not args.no_progress, on_record=keep, deadline=deadline)
        return records, runner.describe()
    from niah.server_runner import run_launched

    # a SIGTERM (a time limit) unwinds through run_launched's `finally`, which stops the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log_dir = Path(args.out).with_suffix("") if args.out else Path(f"quality_servers_{int(started)}")
    records, servers = run_launched(args, model_path, tokenizer, corpus, plan.lengths, plan.windows, plan.names,
                                    plan.positions, plan.depths, log_dir, on_record=keep, deadline=deadline)
    return records, {"runner": "launch", "sglang": package_version("sglang"), "flashinfer": package_version("flashinfer-python"),
                     "launch_command": args.launch_command, "endpoint": args.endpoint,
                     "prompt_format": args.prompt_format, "model_path": model_path, "server_logs": str(log_dir),
                     "servers": servers}


def result_json(args: argparse.Namespace, argv: list[str] | None, plan: Plan, runner: Any, runner_info: dict,
                corpus: Corpus, settings_for: Callable[[int], list[Setting]], verification: dict | None,
                records: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    """The results file: provenance, the task, each setting's config, the records and their summary."""
    num_layers = getattr(runner, "num_layers", None)
    return {
        "benchmark": "quality_niah",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv[:1], *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "runner": runner_info,
        "task": {
            "context_lengths": plan.lengths, "windows": plan.windows, "samples_per_cell_requested": args.samples,
            "samples_per_cell": len({r["index"] for r in records}), "max_minutes": args.max_minutes,
            "positions": plan.positions, "outside_depths": plan.depths, "max_new_tokens": args.max_new_tokens,
            "answer_prefix": not args.no_answer_prefix, "seed": args.seed, "essays_sha256": corpus.sha256,
            "needle": NEEDLE, "question": QUESTION,
            "scoring": "the 7-digit number appears in the greedy answer (not inside a longer number)",
            "inside": "every query that emits an answer token (max_new_tokens of them) sees the whole needle "
            "within the window",
            "outside": "no needle token within the window of the last prompt token",
        },
        "settings": {str(w): [{"name": s.name, "description": s.description, "config": s.config.to_dict(),
                               "resolved": s.config.resolved(num_layers).to_dict() if num_layers else None}
                              for s in settings_for(w)] for w in plan.windows},
        "verification": verification,
        "elapsed_seconds": round(elapsed, 1),
        "summary": summarize(records),
        "records": records,
    }


def write_result(out: Path, result: dict[str, Any], render: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    if render:
        from render_quality import render_files

        for path in render_files(out):
            print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("swaa_sglang").setLevel(logging.WARNING)
    plan = parse_plan(parser, args)
    started = time.time()
    runner, tokenizer, model_path, settings_for = make_runner(args, plan)
    corpus = Corpus(tokenizer)
    verification = None
    if args.verify_tokens and args.runner == "hf":
        verification = verify(args, runner, tokenizer, corpus, plan, settings_for)

    keep = PartialWriter(args.out)  # a crash late in a run keeps the answers

    deadline = started + 60 * args.max_minutes if args.max_minutes else None
    records, runner_info = run_all(args, plan, runner, tokenizer, model_path, corpus, settings_for, keep, deadline,
                                   started)
    elapsed = time.time() - started
    result = result_json(args, argv, plan, runner, runner_info, corpus, settings_for, verification, records, elapsed)
    for row in result["summary"]:
        print(f"L={row['context_length']} W={row['window']} {row['setting']:>16} {row['position']:>8}: "
              f"{row['correct']}/{row['n']}")
    print(f"elapsed {elapsed:.0f} s")
    if args.out:
        write_result(Path(args.out), result, args.render)
        keep.done()
    failed = [s for s in runner_info.get("servers", []) if s.get("error")]
    for s in failed:
        print(f"server for {', '.join(s['settings'])} failed: {s['error']} (log: {s['log']})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
