"""``python -m swaa_sglang.serving.bench TOOL ...``: SGLang's own benchmarks with the SWAA backend and ``--swaa-*`` flags.

SGLang's benchmark tools parse their arguments before any plugin is loaded, so they refuse
``--attention-backend swaa``. This wrapper registers the plugin first, accepts every argument of
the tool plus the SWAA flags of ``swaa_sglang.launch_server`` (``--attention-backend`` defaults to
``swaa``; give ``--attention-backend flashinfer`` and no SWAA flag for vanilla SGLang through the
very same tool), folds the SWAA config into ``--json-model-override-args`` and calls the tool's
own entry function. ``sglang.bench_serving`` needs no wrapper: it is an HTTP client.

Tools (SGLang 0.5.17):
  one_batch           sglang.benchmark.one_batch: one static batch through the model runner, no
                      scheduler; prefill latency and the median decode step, optional torch traces
  offline_throughput  sglang.benchmark.offline_throughput: a dataset of requests through sglang.Engine

Example:
  python -m swaa_sglang.serving.bench one_batch --model-path benchmarks/models/qwen3-4b-2507 --load-format dummy \\
      --swaa-preset balanced --batch-size 1 --input-len 131072 --output-len 256
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Optional, Sequence

# tool name -> (module, entry function taking (server_args, bench_args)); the 0.5.17 layout
TOOLS = {
    "one_batch": ("sglang.benchmark.one_batch", "main"),
    "offline_throughput": ("sglang.benchmark.offline_throughput", "throughput_test"),
}


def build_parser(tool: str):
    """SWAA flags + SGLang's server arguments + the tool's own (call launcher.load_plugin first)."""
    from .launcher import build_parser as server_parser
    from .launcher import short_usage

    module = importlib.import_module(TOOLS[tool][0])
    prog = f"python -m swaa_sglang.serving.bench {tool}"
    parser = server_parser(
        prog=prog,
        description=f"{TOOLS[tool][0]} with the SWAA backend and --swaa-* flags (see python -m swaa_sglang.serving.bench).",
        epilog="",
        usage=short_usage(prog, f" [{tool} arguments ...]"),
    )
    module.BenchArgs.add_cli_args(parser)
    return parser, module


def refusal(tool: str, server_args) -> Optional[str]:
    """What this wrapper cannot run correctly, as one message naming the field, or None."""
    if tool == "one_batch" and server_args.tp_size > 1:
        # one_batch starts its tensor-parallel workers with the spawn method, and nothing on their
        # path loads plugins: they would not know the swaa backend
        return (f"tp_size: {server_args.tp_size}; one_batch's spawned tensor-parallel workers never load the plugin; "
                "allowed: 1 (for --tp use offline_throughput or a server, which load it in every process)")
    if tool == "offline_throughput":
        # it builds its prompts with this tokenizer: a config-only dummy model has none, and every
        # prompt would be empty
        from sglang.benchmark.utils import get_tokenizer  # the one offline_throughput uses

        path = server_args.tokenizer_path or server_args.model_path
        if not get_tokenizer(path).encode("The capital of France is Paris."):
            return (f"tokenizer_path: {path!r} has no usable tokenizer (a config-only model?), so every prompt "
                    "would be empty; allowed: a model directory with a tokenizer, e.g. --tokenizer-path of the "
                    "real model next to --load-format dummy")
    return None


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TOOLS:
        given = f"unknown tool {argv[0]!r}; " if argv and not argv[0].startswith("-") else ""
        sys.stderr.write(__doc__.split("\n\n")[0] + "\n\n")
        sys.exit(f"error: {given}give a tool first; allowed: {', '.join(TOOLS)}")
    tool, rest = argv[0], argv[1:]
    from .launcher import NoCUDAError, load_plugin, parse_server_args

    load_plugin()
    parser, module = build_parser(tool)
    try:
        server_args, args = parse_server_args(parser, rest)
    except (ValueError, NoCUDAError) as e:
        sys.exit(f"error: {e}")
    bench_args = module.BenchArgs.from_cli_args(args)
    problem = refusal(tool, server_args)
    if problem:
        sys.exit(f"error: {problem}")
    logging.basicConfig(level=getattr(logging, server_args.log_level.upper()), format="%(message)s")
    getattr(module, TOOLS[tool][1])(server_args, bench_args)


if __name__ == "__main__":
    main()
