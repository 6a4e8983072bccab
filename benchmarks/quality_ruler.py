"""RULER-style long-context quality of SWAA settings: five synthetic tasks (single needle, multi-key
needle, multi-value needle, variable tracking, common-word extraction) at 4K-32K tokens, scored by
string match; per (task, length, window, setting) the mean score and the count of fully correct
samples with its Wilson 95% interval.

The tasks (``ruler/task.py``) follow RULER (arXiv:2404.06654): the essays the project ships as
haystack, needles at RULER's depths, RULER's templates and answer prefixes. A length L counts the
prompt and the task's answer budget (RULER's tokens_to_generate: 128 for the needle tasks, 30 for
vt, 120 for cwe), so a prompt has L - budget tokens at most and ``tolerance(L)`` = max(32, L/100)
fewer at least, counted with the model's tokenizer. ``--split test`` (default) and ``--split
calibration`` are disjoint: other seeds, other keys, values, variable names and words.

Scoring (``ruler/scoring.py``): the fraction of expected strings in the greedy answer, any case,
not inside a longer word or number; 1 or 0 for the one-answer tasks. The interval is on the fully
correct count (a fractional mean is no count of independent trials); the mean stands beside it.

Settings (``--settings``, ``niah/settings.py``): names built at each of ``--windows`` with
``--sinks`` sink tokens (full, sw, sw+fa, sw+sink, sw+sink+fa, sw+sink+odd, sw+sink+fa+odd,
sw+sink+fa+even), preset names (window-2k, balanced, half-full-4k, ...), and ``NAME=FILE`` for a
``--swaa-config`` file such as the calibrator's recipe. Each record also says where the answer
needles sat for the setting's window (``placement``: inside, outside, mixed, spread for cwe);
``--by-placement`` splits the table by it.

Runners:

* ``hf`` (default without --url): ``swaa_sglang.hf`` on ``--model`` (default: the registered
  Qwen2.5-Coder-0.5B-Instruct, 32K context), float32 on CPU or bfloat16 on GPU; settings that differ
  only in FA decode share one prefill (``niah/hf_runner.py``).
* ``server`` (default with --url): a running OpenAI-compatible server on loopback with one SWAA
  config; name it with ``--server-setting``, record it with ``--server-swaa``
  (``niah/server_runner.py``).
* ``launch``: one server per distinct config, started here one after another (``python -m
  swaa_sglang.launch_server --model-path M --swaa-config FILE``; stock SGLang's flashinfer backend
  for ``full``); each server's log is kept next to ``--out``.

Output: ``--out`` JSON with provenance, every sample's expected answers and needle positions, every
raw answer and the summaries; the per-cell table is printed last. Progress bars go to stderr.

Examples::

    python benchmarks/quality_ruler.py --lengths 4096 --samples 2 --settings full,sw+sink+fa+odd --out /tmp/r.json
    python benchmarks/quality_ruler.py --url http://127.0.0.1:30000 --server-setting balanced \\
        --server-swaa '{"preset": "balanced"}' --samples 50 --concurrency 16 --out r_balanced.json
    python benchmarks/quality_ruler.py --runner launch --settings full,sw,sw+sink,sw+sink+fa+odd --samples 50 \\
        --concurrency 16 --launch-args "--mem-fraction-static 0.6" --out ruler_qwen.json
    python benchmarks/quality_ruler.py --runner launch --settings full,balanced,sw+sink+fa+even,calibrated=recipe.yaml \\
        --lengths 32768 --samples 50 --concurrency 32 --out ruler_32k.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO / "benchmarks") not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(_REPO / "benchmarks"))
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from common import PartialWriter, add_launch_args, package_version  # noqa: E402
from niah.benchmark import Answer, machine_info  # noqa: E402
from niah.settings import ALLOWED_SETTINGS, DEFAULT_SETTINGS, Setting, build_settings  # noqa: E402
from niah.task import Corpus  # noqa: E402
from ruler.scoring import format_table, matches, summarize  # noqa: E402
from ruler.task import (  # noqa: E402
    DEFAULT_LENGTHS, MAX_NEW_TOKENS, SPLITS, TASKS, RulerSample, check_length, make_sample, tolerance,
)

logger = logging.getLogger("quality_ruler")

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"  # swaa_sglang.models' registered 32K model
DEFAULT_WINDOWS = (2048,)
DEFAULT_SINKS = 100  # the paper's recipes (presets sink100-2k, balanced)


def build_parser() -> argparse.ArgumentParser:
    # the whole docstring in --help, as written (the defaults still shown per flag)
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    intro, _, details = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(prog="python benchmarks/quality_ruler.py", description=intro, epilog=details,
                                formatter_class=Formatter)
    p.add_argument("--runner", choices=("hf", "server", "launch"),
                   help="hf: the HF reference here; server: the running server at --url (one setting); launch: "
                   "one server per setting, started here (default: server with --url, else hf)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    p.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                   help="comma-separated target lengths in tokens (prompt + the task's answer budget)")
    p.add_argument("--samples", type=int, default=10, help="samples per (task, length)")
    p.add_argument("--first-index", type=int, default=0,
                   help="index of the first sample: a later run with --first-index N adds samples N.. to an "
                   "earlier run of N samples (render_ruler.py merges the two)")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="test, or calibration (disjoint: other seeds, keys, values, names, words)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", default=",".join(map(str, DEFAULT_WINDOWS)), help="comma-separated window sizes W")
    p.add_argument("--sinks", type=int, default=DEFAULT_SINKS, help="keep_first of the +sink settings")
    p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS), help=f"comma-separated: {ALLOWED_SETTINGS}")
    p.add_argument("--by-placement", action="store_true",
                   help="split the table by where the answer needles sit for the window: inside, outside, mixed")
    p.add_argument("--max-minutes", type=float,
                   help="time budget: start no new sample index after this many minutes (cells stay balanced)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="a model registered in swaa_sglang.models (its name) or a HF model directory")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model's)")
    p.add_argument("--out", help="results JSON (default: print the table only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    g = p.add_argument_group("hf runner")
    g.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="default: float32 on CPU, bfloat16 on GPU")
    g.add_argument("--attention", choices=("blockwise", "reference"), default="blockwise",
                   help="swaa_sglang.hf's blockwise attention (bounded memory) or its eager-exact one")
    g = p.add_argument_group("server runner")
    g.add_argument("--url", help="a running OpenAI-compatible server on loopback, e.g. http://127.0.0.1:30000")
    g.add_argument("--endpoint", choices=("completions", "chat"), default="completions",
                   help="completions: the prompt with its answer prefix; chat: the messages (no prefix)")
    g.add_argument("--prompt-format", choices=("ids", "text"), default="ids", help="/v1/completions prompt")
    g.add_argument("--server-model", help="model name in requests (default: the first of /v1/models)")
    g.add_argument("--server-setting", default="server", help="a name for the server's SWAA config")
    g.add_argument("--server-swaa", default="{}", help="the server's SWAA config as JSON (recorded)")
    g.add_argument("--concurrency", type=int, default=1,
                   help="requests in flight at once (server and launch runners): more lets the server batch them, "
                   "faster; a batch can turn a near-tie in greedy decoding the other way")
    g = p.add_argument_group("launch runner (also uses --model, --endpoint, --prompt-format)")
    g.add_argument("--launch-args", default="", help="extra server flags, e.g. '--mem-fraction-static 0.6'")
    add_launch_args(g)
    return p


@dataclass(frozen=True)
class Plan:
    """The parsed lists of one run."""

    runner: str
    tasks: list[str]
    lengths: list[int]
    windows: list[int]
    names: list[str]

    def settings_for(self, window: int, sinks: int) -> list[Setting]:
        return build_settings(window, sinks, self.names)


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _positive_ints(parser: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in _items(text)]
    except ValueError:
        parser.error(f"{flag}: expected comma-separated positive integers; got {text!r}")
    if not values or min(values) <= 0:
        parser.error(f"{flag}: expected comma-separated positive integers; got {text!r}")
    return values


def parse_plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    """The comma lists and flag combinations, checked; every error names its flag."""
    runner = args.runner or ("server" if args.url else "hf")
    tasks = _items(args.tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        parser.error(f"--tasks: unknown {unknown or tasks!r}; allowed: {', '.join(TASKS)}")
    lengths = _positive_ints(parser, "--lengths", args.lengths)
    for task in tasks:
        for length in lengths:
            try:
                check_length(task, length)
            except ValueError as e:
                parser.error(f"--lengths: {e}")
    windows = _positive_ints(parser, "--windows", args.windows)
    if args.samples < 1:
        parser.error(f"--samples: expected at least 1; got {args.samples}")
    if args.first_index < 0:
        parser.error(f"--first-index: expected 0 or more; got {args.first_index}")
    if args.concurrency < 1:
        parser.error(f"--concurrency: expected at least 1; got {args.concurrency}")
    if args.concurrency > 1 and runner == "hf":
        parser.error("--concurrency: only with a server runner (--url or --runner launch); the HF runner is serial")
    if args.sinks < 0:
        parser.error(f"--sinks: expected 0 or more; got {args.sinks}")
    plan = Plan(runner, tasks, lengths, windows, _items(args.settings))
    try:
        plan.settings_for(windows[0], args.sinks)
    except ValueError as e:  # "settings: unknown setting ...", or a NAME=FILE that cannot be read
        parser.error(f"--settings: {str(e).removeprefix('settings: ')}")
    if runner == "server":
        if not args.url:
            parser.error("--url: required with --runner server (a running server, e.g. http://127.0.0.1:30000)")
        from niah.server_runner import LOOPBACK_HOSTS

        parsed = urlparse(args.url)
        if parsed.scheme not in ("http", "https") or parsed.hostname not in LOOPBACK_HOSTS:
            parser.error(f"--url: only loopback servers (http://127.0.0.1:PORT); got {args.url!r}")
        try:
            json.loads(args.server_swaa)
        except json.JSONDecodeError as e:
            parser.error(f"--server-swaa: not JSON ({e}); got {args.server_swaa!r}")
    elif args.url:
        parser.error(f"--url: only with --runner server; got --runner {runner}")
    return plan


def resolve_model(name_or_path: str) -> str:
    """A registered model's provisioned directory (``swaa_sglang.models``), else the path as given."""
    from swaa_sglang.models import MODELS, model_path

    return model_path(name_or_path) if name_or_path in MODELS else name_or_path


def make_runner(args: argparse.Namespace, plan: Plan) -> tuple[Any, Any, str, Callable[[int], list[Setting]]]:
    """(runner, tokenizer, model path, settings per window); the launch runner has no runner object."""
    from transformers import AutoTokenizer

    from swaa_sglang.config import SWAAConfig

    path = resolve_model(args.model)
    if plan.runner == "hf":
        from niah.hf_runner import HFRunner

        runner = HFRunner.load(path, args.device, args.dtype, max(MAX_NEW_TOKENS.values()), args.attention)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else runner.tokenizer
        return runner, tokenizer, path, lambda w: plan.settings_for(w, args.sinks)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or path)
    if plan.runner == "launch":
        return None, tokenizer, path, lambda w: plan.settings_for(w, args.sinks)
    from niah.server_runner import ServerRunner

    setting = Setting(args.server_setting, "the server's config", SWAAConfig.from_dict(json.loads(args.server_swaa)))
    runner = ServerRunner(args.url, setting, max(MAX_NEW_TOKENS.values()), args.endpoint, args.prompt_format,
                          args.server_model)
    return runner, tokenizer, path, lambda w: [setting]


class SampleCache:
    """Samples by (task, length, index), made once per run: the launch runner's servers all ask for them."""

    def __init__(self, tokenizer: Any, corpus: Corpus, seed: int, split: str):
        self.tokenizer, self.corpus, self.seed, self.split = tokenizer, corpus, seed, split
        self._samples: dict[tuple[str, int, int], RulerSample] = {}

    def get(self, task: str, length: int, index: int) -> RulerSample:
        key = (task, length, index)
        if key not in self._samples:
            self._samples[key] = make_sample(self.tokenizer, self.corpus, task, length, index, self.seed, self.split)
        return self._samples[key]


def make_record(sample: RulerSample, window: int, setting: Setting, answer: Answer, reused: bool) -> dict[str, Any]:
    """One raw answer, scored, with the sample's description (expected strings, needle positions)."""
    found = matches(answer.text, sample.expected)
    return {
        "window": window,
        "setting": setting.name,
        **sample.describe(),
        "placement": sample.placement(setting.placement_window(window)),
        "answer": answer.text,
        "answer_tokens": answer.tokens,
        "found": found,
        "score": round(sum(found) / len(found), 4),
        "seconds": round(answer.seconds, 3),
        "reused": reused,
    }


def run_samples(runner: Any, samples: SampleCache, plan: Plan, n_samples: int, windows: Sequence[int],
                settings_for: Callable[[int], list[Setting]], progress: bool = True,
                on_record: Callable[[dict], None] | None = None, deadline: float | None = None,
                concurrency: int = 1, first_index: int = 0) -> list[dict[str, Any]]:
    """Answer every (index, length, task, window, setting); one record each, in that order.

    Index first, so that a run stopped at ``deadline`` (checked before each new group of indices)
    leaves every cell with the same number of samples. One sample's prompt under a config already
    answered (full attention at a second window) is answered once. ``concurrency`` samples are in
    flight at once (server runners: the server batches them); samples are made here, in this thread."""
    from tqdm import tqdm

    if hasattr(runner, "model_name"):
        runner.model_name()  # asked once, before the copies below
    # one runner per answer budget (RULER's differs per task): copies, so that threads share no mutable field
    runners: dict[int, Any] = {}
    for budget in sorted({MAX_NEW_TOKENS[task] for task in plan.tasks}):
        runners[budget] = copy.copy(runner)
        runners[budget].max_new_tokens = budget

    def answer(sample: RulerSample) -> list[dict[str, Any]]:
        answered: dict[str, Answer] = {}  # by config
        out = []
        for w in windows:
            settings = settings_for(w)
            todo = [s for s in settings if s.config.to_json() not in answered]
            if todo:
                for s, a in zip(todo, runners[sample.max_new_tokens].answer(sample, todo).values()):
                    answered[s.config.to_json()] = a
            out += [make_record(sample, w, s, answered[s.config.to_json()], s not in todo) for s in settings]
        return out

    per_index = [(length, task) for length in plan.lengths for task in plan.tasks]
    group = -(-concurrency // len(per_index))  # indices per group: enough samples to keep every slot busy
    bar = tqdm(total=n_samples * len(per_index) * sum(len(settings_for(w)) for w in windows), desc="answers",
               unit="ans", disable=not progress, file=sys.stderr)
    records: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        mapper = pool.map if concurrency > 1 else map
        end = first_index + n_samples
        for first in range(first_index, end, group):
            if deadline is not None and time.time() > deadline:
                logger.warning("time budget reached: stopping after %d samples per cell", first - first_index)
                break
            batch = [samples.get(task, length, i) for i in range(first, min(first + group, end))
                     for length, task in per_index]
            for recs in mapper(answer, batch):
                records += recs
                for rec in recs:
                    if on_record:
                        on_record(rec)
                bar.update(len(recs))
                bar.set_postfix_str(f"mean score {sum(r['score'] for r in records) / len(records):.3f}")
    bar.close()
    return records


def run_launched(args: argparse.Namespace, plan: Plan, model_path: str, samples: SampleCache, log_dir: Path,
                 on_record: Callable[[dict], None] | None = None,
                 deadline: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every setting through a server of its own, one server at a time (``niah/server_runner.py``'s
    grouping and flags: full attention is one stock-SGLang server for all windows); returns the
    records and what each server was. ``deadline`` is shared out over the servers still to run."""
    from niah.server_runner import ServerRunner, for_each_server

    def run_on_server(url: str, by_name: dict[str, dict[int, Setting]], share: float | None):
        records: list[dict[str, Any]] = []
        model = ""
        for by_window in by_name.values():
            runner = ServerRunner(url, next(iter(by_window.values())), max(MAX_NEW_TOKENS.values()),
                                  args.endpoint, args.prompt_format, args.server_model)
            records += run_samples(runner, samples, plan, args.samples, sorted(by_window),
                                   lambda w, bw=by_window: [bw[w]], not args.no_progress, on_record, share,
                                   args.concurrency, args.first_index)
            model = runner.model_name()
        return records, model

    return for_each_server(args, model_path, plan.windows, plan.names, log_dir, run_on_server, deadline)


def result_json(args: argparse.Namespace, argv: list[str] | None, plan: Plan, runner: Any, runner_info: dict,
                corpus: Corpus, settings_for: Callable[[int], list[Setting]], records: list[dict[str, Any]],
                elapsed: float) -> dict[str, Any]:
    """The results file: provenance, the task definition, each setting's config, the records and summaries."""
    num_layers = getattr(runner, "num_layers", None)
    return {
        "benchmark": "quality_ruler",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv[:1], *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "runner": runner_info,
        "task": {
            "source": "RULER (Hsieh et al., arXiv:2404.06654), benchmarks/ruler/task.py",
            "tasks": plan.tasks, "lengths": plan.lengths, "windows": plan.windows, "split": args.split,
            "seed": args.seed, "samples_per_cell_requested": args.samples, "first_index": args.first_index,
            "samples_per_cell": len({r["index"] for r in records}), "max_minutes": args.max_minutes,
            "max_new_tokens": {t: MAX_NEW_TOKENS[t] for t in plan.tasks},
            "prompt_tokens": "length - max_new_tokens at most, tolerance(length) fewer at least",
            "tolerance": {str(length): tolerance(length) for length in plan.lengths},
            "essays_sha256": corpus.sha256,
            "scoring": "fraction of expected strings in the answer, any case, not inside a longer word or number; "
            "Wilson 95% on the count of fully correct samples",
            "placement": "inside: the last prompt token sees every answer needle through the window; outside: no "
            "token of any; mixed: otherwise; spread: no needles (cwe)",
        },
        "settings": {str(w): [{"name": s.name, "description": s.description, "config": s.config.to_dict(),
                               "resolved": s.config.resolved(num_layers).to_dict() if num_layers else None}
                              for s in settings_for(w)] for w in plan.windows},
        "elapsed_seconds": round(elapsed, 1),
        "summary": summarize(records),
        "summary_by_placement": summarize(records, by_placement=True),
        "records": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("swaa_sglang").setLevel(logging.WARNING)
    plan = parse_plan(parser, args)
    started = time.time()
    runner, tokenizer, model_path, settings_for = make_runner(args, plan)
    if plan.runner == "hf":
        context = getattr(runner.model.config.get_text_config(), "max_position_embeddings", None)
        if context and max(plan.lengths) > context:
            parser.error(f"--lengths: {max(plan.lengths)} exceeds the model's context ({context} tokens)")
    corpus = Corpus(tokenizer)
    samples = SampleCache(tokenizer, corpus, args.seed, args.split)
    for task in plan.tasks:  # fail before the first answer, not hours in, if a length cannot be filled
        for length in plan.lengths:
            try:
                samples.get(task, length, 0)
            except ValueError as e:
                parser.error(f"--lengths: {task} at {length}: {e}")

    keep = PartialWriter(args.out)  # a crash late in a run keeps the answers

    deadline = started + 60 * args.max_minutes if args.max_minutes else None
    if plan.runner != "launch":
        records = run_samples(runner, samples, plan, args.samples, plan.windows, settings_for, not args.no_progress,
                              keep, deadline, args.concurrency, args.first_index)
        runner_info = runner.describe()
    else:
        # a SIGTERM (a time limit) unwinds through run_launched's `finally`, which stops the server
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        log_dir = Path(args.out).with_suffix("") if args.out else Path(f"ruler_servers_{int(started)}")
        records, servers = run_launched(args, plan, model_path, samples, log_dir, keep, deadline)
        runner_info = {"runner": "launch", "sglang": package_version("sglang"), "flashinfer": package_version("flashinfer-python"),
                       "launch_command": args.launch_command, "endpoint": args.endpoint,
                       "prompt_format": args.prompt_format, "model_path": model_path, "server_logs": str(log_dir),
                       "servers": servers}
    runner_info.setdefault("model_path", model_path)
    elapsed = time.time() - started
    result = result_json(args, argv, plan, runner, runner_info, corpus, settings_for, records, elapsed)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")
        keep.done()
    failed = [s for s in runner_info.get("servers", []) if s.get("error")]
    for s in failed:
        print(f"server for {', '.join(s['settings'])} failed: {s['error']} (log: {s['log']})", file=sys.stderr)
    print(f"elapsed {elapsed:.0f} s; {len(records)} answers")
    print(format_table(result["summary_by_placement" if args.by_placement else "summary"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
