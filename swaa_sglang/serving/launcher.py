"""``python -m swaa_sglang.launch_server``: SGLang's server with the SWAA backend and ``--swaa-*`` flags.

Every SGLang server argument works as usual (``--config FILE.yaml`` too). The
SWAA flags are turned into the ``swaa`` key of ``--json-model-override-args``,
which SGLang hands to every worker process; ``--attention-backend`` defaults to
``swaa``; without ``--model-path`` the embedded SmolLM2-135M-Instruct is used.

Refusals are one line each: an argument error prints a short usage (not every SGLang option), a
bad SWAA setting names its field, and a machine without a CUDA GPU is told so, after those
checks, with the CPU alternative (the HF reference).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn, Optional, Sequence

from swaa_sglang.cli import FLAG_DESTS, add_swaa_args, config_from_args

from .server_args import BACKEND_NAME, config_from_override_args, with_config

logger = logging.getLogger("swaa_sglang")

PROG = "python -m swaa_sglang.launch_server"
HF_REFERENCE_COMMAND = "python -m swaa_sglang.hf --prompt 'Hello' --swaa-preset balanced"
NO_CUDA_MESSAGE = (
    "swaa-sglang serves on NVIDIA GPUs (CUDA); none found. For CPU use, run the HF reference: "
    f"{HF_REFERENCE_COMMAND} (see python -m swaa_sglang.hf --help)"
)
EPILOG = f"""\
quick start (an NVIDIA GPU; the embedded SmolLM2-135M-Instruct, then your model):
  {PROG} --swaa-preset balanced --port 30000
  {PROG} --model-path Qwen/Qwen3-4B-Instruct-2507 --swaa-preset balanced --port 30000
on CPU, the HF reference with the same SWAA flags (no server):
  {HF_REFERENCE_COMMAND}
SGLang's benchmark tools with these flags:
  python -m swaa_sglang.serving.bench one_batch|offline_throughput ...
"""


class NoCUDAError(RuntimeError):
    """The server needs a CUDA GPU and this machine has none; the message is the one line to print."""


class ShortUsageParser(argparse.ArgumentParser):
    """An argument parser whose errors print its short usage, the error and a hint to ``--help``.

    argparse would print the usage of every SGLang server argument (hundreds of lines) above
    the one line that matters.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(run {self.prog} --help for every option)\n")


def short_usage(prog: str, tail: str = "") -> str:
    """A one-line usage: the SWAA flags by group, then the SGLang server arguments (and ``tail``)."""
    return (f"{prog} [--swaa-preset NAME | --swaa-config FILE] [--swaa-window W] [--swaa-keep-first K] "
            f"[--swaa-* ...] [--model-path PATH] [SGLang server arguments ...]{tail}")


def wants_cuda(device: Optional[str]) -> bool:
    """Whether SGLang's ``--device`` value asks for CUDA: unset (auto-detect), 'auto', 'cuda' or 'cuda:N'."""
    return device is None or device.split(":")[0] in ("auto", "cuda")


def cuda_missing(device: Optional[str]) -> bool:
    """True when the server would need a CUDA GPU (see :func:`wants_cuda`) and torch sees none."""
    if not wants_cuda(device):
        return False
    import torch

    return not torch.cuda.is_available()


def load_plugin() -> None:
    """Register the backend and apply SGLang's hooks in this process, before any parser is built
    (SGLang checks ``--attention-backend`` against its registered choices while parsing)."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry

    from .plugin import register

    load_plugins()  # our entry point among them; register() is idempotent for source checkouts
    register()
    HookRegistry.apply_hooks()


def build_parser(
    prog: str = PROG,
    description: str = __doc__.split("\n\n")[0].strip("`").replace("``", ""),
    epilog: str = EPILOG,
    usage: Optional[str] = None,
) -> argparse.ArgumentParser:
    """The SWAA flags plus every SGLang server argument, with our defaults (call :func:`load_plugin` first).

    ``usage`` defaults to :func:`short_usage`; argument errors print it, not every option.
    """
    from sglang.srt.server_args import ServerArgs

    parser = ShortUsageParser(prog=prog, description=description, epilog=epilog, usage=usage or short_usage(prog),
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # keeps the epilog's lines
    add_swaa_args(parser)
    ServerArgs.add_cli_args(parser)
    # our defaults, visible in --help
    parser.set_defaults(attention_backend=BACKEND_NAME)
    for action in parser._actions:
        if action.dest == "model_path":
            action.required = False
            action.default = None
            action.help = (action.help or "") + " Default here: the embedded SmolLM2-135M-Instruct."
    return parser


def parse_server_args(parser: argparse.ArgumentParser, argv: Sequence[str]):
    """argv -> (sglang ServerArgs with the SWAA config folded into json_model_override_args, the
    parsed namespace without the SWAA flags: a wrapped tool reads its own arguments from it).

    Order of refusals: argparse errors (exit 2), then the SWAA flags (ValueError naming the field),
    then SGLang's ServerArgs with the plugin's checks (ValueError naming the field), and only then,
    for a CUDA device on a machine without one, :class:`NoCUDAError`.
    """
    from sglang.srt.server_args import ServerArgs

    argv = list(argv)
    if "--config" in argv:
        from sglang.srt.server_args_config_parser import ConfigArgumentMerger

        argv = ConfigArgumentMerger(parser).merge_config_with_args(argv)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    if config is not None:
        args.json_model_override_args = with_config(args.json_model_override_args, config)
    elif args.attention_backend == BACKEND_NAME and config_from_override_args(args.json_model_override_args) is None:
        parser.error("give a SWAA setting: --swaa-preset NAME, --swaa-config FILE or --swaa-window W")
    if args.model_path is None:
        from swaa_sglang.models import default_model_path

        args.model_path = default_model_path()
        logger.info("no --model-path: serving the embedded default model at %s", args.model_path)
    for name in FLAG_DESTS:  # SGLang's ServerArgs takes no SWAA flags; the config travels in the override
        delattr(args, name)
    no_cuda = cuda_missing(args.device)
    try:
        server_args = ServerArgs.from_cli_args(args)
    except RuntimeError as e:
        # SGLang's device detection raises when it finds no accelerator, after the plugin's checks
        # (ValueError, passed on); without CUDA the server cannot run whatever else went wrong
        if no_cuda:
            raise NoCUDAError(NO_CUDA_MESSAGE) from e
        raise
    if no_cuda:  # e.g. --device cuda, or detection found another accelerator
        raise NoCUDAError(NO_CUDA_MESSAGE)
    return server_args, args


def prepare_server_args(argv: Sequence[str]):
    """argv -> sglang ServerArgs with the SWAA config folded into json_model_override_args."""
    load_plugin()
    return parse_server_args(build_parser(), argv)[0]


def main(argv: Optional[Sequence[str]] = None) -> None:
    from sglang.launch_server import run_server
    from sglang.srt.utils import kill_process_tree

    argv = sys.argv[1:] if argv is None else argv
    try:
        server_args = prepare_server_args(argv)
    except (ValueError, NoCUDAError) as e:
        sys.exit(f"error: {e}")
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)


if __name__ == "__main__":
    main()
