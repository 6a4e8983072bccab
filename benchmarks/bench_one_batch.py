"""SGLang's own one-batch benchmark per setting: prefill latency and decode step, SWAA against vanilla (GPU).

Runs ``python -m swaa_sglang.serving.bench one_batch`` (``sglang.benchmark.one_batch`` with the plugin
loaded) once per setting, each in a fresh process, on a dummy-weight model config: one batch
goes through SGLang's model runner with no scheduler, its prompt prefilled in one forward pass
(not chunked), then ``--output-len`` decode steps with CUDA graphs; SGLang reports the prefill
latency and the median decode step. Vanilla is the same tool with ``--attention-backend
flashinfer``. Prints a table with speed-ups over ``--baseline`` (vanilla) and writes JSON
(rewritten after each engine); each setting's console goes to ``<out stem>.<setting>.log``.

``--rounds N`` runs the whole list N times in turn (A B A B ...), a fresh engine each time, so a
difference between two settings can be set against the spread between engines of one setting:
rows carry their round, speed-ups compare within a round, logs are ``<out stem>.<setting>.r<k>.log``,
and a last table gives each setting's median step, its range and its median speed-up.

    python benchmarks/bench_one_batch.py --settings vanilla,full,sink100-2k,balanced --out one_batch.json
    python benchmarks/bench_one_batch.py --settings vanilla-no-prefill-graph,full --baseline vanilla-no-prefill-graph \
        --lengths 32768 --rounds 3
    python benchmarks/bench_one_batch.py --quick
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

from common import add_engine_args, make_parser, parse_positive_ints, parse_settings, run_meta, server_flags, write_json

BENCH_COMMAND = f"{sys.executable} -m swaa_sglang.serving.bench one_batch"


def tool_args(setting: str, a) -> list[str]:
    """The one_batch arguments for one setting (its backend flags as common.server_flags gives them)."""
    return [
        "--model-path", a.model, "--load-format", "dummy", *server_flags(setting), "--mem-fraction-static", str(a.mem),
        "--batch-size", str(a.batch_size), "--input-len", *map(str, a.lengths), "--output-len", str(a.output_len),
        "--run-name", setting, *shlex.split(a.extra),
    ]


def run_setting(setting: str, a, log_path: Path) -> list[dict]:
    """One fresh process; SGLang's result rows (jsonl), or RuntimeError with the log's tail."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.jsonl"
        cmd = [*shlex.split(a.bench_command), *tool_args(setting, a), "--result-filename", str(result_file)]
        with open(log_path, "w") as log:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=a.timeout).returncode
        rows = [json.loads(line) for line in result_file.read_text().splitlines()] if result_file.exists() else []
    if rc != 0 or not rows:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{setting}: one_batch exited {rc} with {len(rows)} result rows; log {log_path}:\n{tail}")
    return rows


def _baseline_rows(result: dict) -> dict[tuple[int, int], dict]:
    """(round, prompt length) -> the baseline setting's row."""
    b = result["meta"].get("baseline", "vanilla")
    return {(r.get("round", 1), r["input_len"]): r for r in result["rows"] if r["run_name"] == b}


def _baseline_of(row: dict, base: dict[tuple[int, int], dict]) -> dict | None:
    """The baseline row the row compares against (same round and length); None for the baseline itself."""
    b = base.get((row.get("round", 1), row["input_len"]))
    return None if b is row else b


def table(result: dict) -> list[str]:
    """Rows per setting and prompt length; speed-ups against the baseline's row of the same length and round."""
    base = _baseline_rows(result)
    rounds = result["meta"].get("rounds", 1) > 1
    w = max([16, *(len(r["run_name"]) for r in result["rows"])])  # 'vanilla-no-prefill-graph' is 24
    lines = [f"{'setting':{w}} {'round  ' if rounds else ''}{'prompt':>7} {'prefill s':>10} {'speed-up':>9} "
             f"{'decode ms':>10} {'tok/s':>8} {'speed-up':>9}"]
    for r in result["rows"]:
        v = _baseline_of(r, base)
        pre = f"{v['prefill_latency'] / r['prefill_latency']:8.2f}x" if v else f"{'-':>9}"
        dec = f"{v['median_decode_latency'] / r['median_decode_latency']:8.2f}x" if v else f"{'-':>9}"
        tok_s = r["batch_size"] / r["median_decode_latency"]
        round_col = f"{r.get('round', 1):<7}" if rounds else ""
        lines.append(f"{r['run_name']:{w}} {round_col}{r['input_len']:>7} {r['prefill_latency']:10.3f} {pre} "
                     f"{1000 * r['median_decode_latency']:10.3f} {tok_s:8.1f} {dec}")
    return lines


def spread(result: dict) -> list[dict]:
    """Per setting and prompt length over the rounds: the median decode step, its range (ms), and the
    median of the per-round decode speed-ups over the baseline (None where no round has both)."""
    base = _baseline_rows(result)
    cells: dict[tuple[str, int], list[float]] = {}
    ups: dict[tuple[str, int], list[float]] = {}
    for r in result["rows"]:
        key = (r["run_name"], r["input_len"])
        cells.setdefault(key, []).append(1000 * r["median_decode_latency"])
        b = _baseline_of(r, base)
        if b is not None:
            ups.setdefault(key, []).append(b["median_decode_latency"] / r["median_decode_latency"])
    return [{"setting": name, "prompt": n, "engines": len(ms), "median_ms": median(ms), "min_ms": min(ms),
             "max_ms": max(ms), "median_speedup": median(ups[name, n]) if (name, n) in ups else None}
            for (name, n), ms in cells.items()]


def spread_table(rows: list[dict], baseline: str) -> list[str]:
    w = max([16, *(len(r["setting"]) for r in rows)])
    lines = [f"decode step over the rounds (one engine each; speed-up: median over rounds, against {baseline}):",
             f"{'setting':{w}} {'prompt':>7} {'engines':>8} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'range':>7} "
             f"{'speed-up':>9}"]
    for r in rows:
        # one engine has no range to show: '-' rather than a 0.0% that would read as perfectly steady
        rng = f"{100 * (r['max_ms'] - r['min_ms']) / r['median_ms']:6.1f}%" if r["engines"] > 1 else f"{'-':>7}"
        up = f"{r['median_speedup']:8.2f}x" if r["median_speedup"] else f"{'-':>9}"
        lines.append(f"{r['setting']:{w}} {r['prompt']:>7} {r['engines']:>8} {r['median_ms']:10.3f} {r['min_ms']:8.3f} "
                     f"{r['max_ms']:8.3f} {rng} {up}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    add_engine_args(p, settings="vanilla,vanilla-no-prefill-graph,full,sink100-2k,balanced", mem=0.75,
                    mem_help="mem_fraction_static (lower than a server's: the prompt is prefilled in one pass, "
                    "not in chunks)")
    p.add_argument("--lengths", default="8192,32768,65536,131072", help="prompt lengths (one batch each)")
    p.add_argument("--output-len", type=int, default=256, help="decode steps per batch (SGLang reports the median)")
    p.add_argument("--batch-size", type=int, default=1, help="requests in the one static batch")
    p.add_argument("--extra", default="", help="more one_batch arguments, e.g. '--profile --profile-stage decode'")
    p.add_argument("--quick", action="store_true", help="8K and 32K, 64 decode steps")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the settings list this many times in turn, a fresh engine each (engine-to-engine spread)")
    p.add_argument("--baseline", default="vanilla",
                   help="the setting the speed-ups are measured against (a run without vanilla shows none)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per engine (one setting, one round)")
    p.add_argument("--bench-command", default=BENCH_COMMAND, help="the wrapped tool")
    p.add_argument("--out", default="one_batch.json", help="JSON file (rewritten after each engine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    settings = parse_settings(p, a.settings, repeat_hint="; to run a setting on several engines use --rounds N")
    if a.rounds < 1:
        p.error(f"--rounds: {a.rounds}; allowed: 1 or more")
    if a.baseline != "vanilla" and a.baseline not in settings:  # vanilla: the default, optional in a run
        p.error(f"--baseline: {a.baseline!r} is not among --settings ({', '.join(settings)})")
    a.lengths = [8192, 32768] if a.quick else parse_positive_ints(p, "--lengths", a.lengths)
    if a.quick:
        a.output_len = 64
    from tqdm import tqdm  # comes with sglang

    out = Path(a.out)
    result = {"meta": run_meta(a.model, tool="sglang.benchmark.one_batch via python -m swaa_sglang.serving.bench",
                               prefill="one forward pass, not chunked", decode="median step, CUDA graphs",
                               baseline=a.baseline, rounds=a.rounds),
              "rows": [], "failed": {}}
    runs = [(k, setting) for k in range(1, a.rounds + 1) for setting in settings]
    for k, setting in tqdm(runs, desc="engines", disable=a.no_progress):
        name = setting if a.rounds == 1 else f"{setting}.r{k}"  # log name and failure key
        log = out.with_name(f"{out.stem}.{name}.log")
        try:
            rows = run_setting(setting, a, log)
            result["rows"] += [{**row, "round": k} for row in rows] if a.rounds > 1 else rows
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            result["failed"][name] = str(e)
            print(f"\n{e}", file=sys.stderr)
        if a.rounds > 1:
            result["spread"] = spread(result)
        write_json(out, result)
    print(f"\n{result['meta']['gpu']}, {result['meta']['date']}, {Path(a.model).name}, dummy weights, batch {a.batch_size}, "
          f"{a.output_len} decode steps")
    print("\n".join(table(result)))
    if a.rounds > 1:
        print("\n" + "\n".join(spread_table(result["spread"], a.baseline)))
    print(f"wrote {out}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
