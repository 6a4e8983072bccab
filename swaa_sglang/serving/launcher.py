"""``python -m swaa_sglang.launch_server``: SGLang's server with the SWAA backend and ``--swaa-*`` flags.

Every SGLang server argument works as usual (``--config FILE.yaml`` too). The
SWAA flags are turned into the ``swaa`` key of ``--json-model-override-args``,
which SGLang hands to every worker process; ``--attention-backend`` defaults to
``swaa``; without ``--model-path`` the embedded SmolLM2-135M-Instruct is used.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from .server_args import BACKEND_NAME, add_swaa_args, config_from_args, config_from_override_args, with_config

logger = logging.getLogger("swaa_sglang")


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
    prog: str = "python -m swaa_sglang.launch_server",
    description: str = __doc__.split("\n\n")[0].strip("`").replace("``", ""),
    epilog: str = "Example: python -m swaa_sglang.launch_server --model-path Qwen/Qwen3-4B-Instruct-2507 "
    "--swaa-preset balanced --port 30000",
) -> argparse.ArgumentParser:
    """The SWAA flags plus every SGLang server argument, with our defaults (call :func:`load_plugin` first)."""
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
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
    parsed namespace without the SWAA flags: a wrapped tool reads its own arguments from it)."""
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
    for name in ("swaa_preset", "swaa_config", "swaa_window", "swaa_keep_first", "swaa_fa_decode", "swaa_full_layers",
                 "swaa_evict_window"):
        delattr(args, name)
    return ServerArgs.from_cli_args(args), args


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
    except ValueError as e:
        sys.exit(f"error: {e}")
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)


if __name__ == "__main__":
    main()
