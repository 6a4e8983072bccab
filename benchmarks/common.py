"""What the benchmark scripts share: the settings they compare, their engine and server flags, and
starting and stopping an engine or a server.

A *setting* names one way of serving the model:

* ``vanilla``: stock SGLang, its ``flashinfer`` backend as shipped;
* ``vanilla-no-prefill-graph``: the same with the prefill CUDA graph off, as the plugin runs SWAA
  (it tells the backend's own cost from that switch);
* a SWAA preset (``swaa_sglang.config.PRESETS``; ``full`` is the swaa backend with SWAA off);
* ``PRESET+noevict``: the preset with window eviction off (it is on by default for presets with
  windowed layers); ``PRESET+evict`` asks for it explicitly (refused where no layer is windowed).
* ``SETTING+chunkN`` (any of the above): SGLang's chunked-prefill size N tokens instead of the
  engine benchmarks' 8192 (SGLang's own default for the server-flag tools); a windowed layer's
  prefill chunk costs O(N x W), so larger chunks can pay off there.

Stdlib only at import time (soak.py runs without torch); SGLang and the SWAA config are imported
where they are used.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "models" / "qwen3-4b-2507"  # Qwen3-4B-Instruct-2507's config.json, for dummy weights

# stock SGLang settings as Engine kwargs
VANILLA: dict[str, dict[str, Any]] = {"vanilla": {}, "vanilla-no-prefill-graph": {"disable_prefill_cuda_graph": True}}
# setting suffixes: window eviction explicitly on / off (a bare preset takes the default: on where a layer is windowed)
EVICT_SUFFIXES = {"+evict": True, "+noevict": False}
CHUNK_SUFFIX = "+chunk"  # +chunkN: chunked-prefill size N
DEFAULT_CHUNKED_PREFILL = 8192  # the benchmarks' chunked-prefill size unless a setting says +chunkN
SETTINGS_HELP = ("comma list: 'vanilla' (stock SGLang, flashinfer backend), 'vanilla-no-prefill-graph' (the same "
                 "with the prefill CUDA graph off, as the plugin runs SWAA), a SWAA preset ('full': the swaa backend "
                 "with SWAA off, which isolates the plugin's own cost; window eviction on by default where a "
                 "layer is windowed), PRESET+noevict (window eviction off) or PRESET+evict (explicitly on); any "
                 f"of these +chunkN: chunked-prefill size N (default {DEFAULT_CHUNKED_PREFILL} for engines, SGLang's "
                 "own for the server-flag tools)")


# -- settings ---------------------------------------------------------------------------------------
def split_setting(setting: str) -> tuple[str, bool | None, int | None]:
    """(base name, eviction on/off or None for the default, chunked-prefill size or None); ValueError
    naming the allowed suffixes."""
    name, *suffixes = setting.split("+")
    evict: bool | None = None
    chunk: int | None = None
    allowed = ", ".join(f"'{s}'" for s in (*EVICT_SUFFIXES, CHUNK_SUFFIX + "N"))
    for suffix in ("+" + x for x in suffixes):
        if suffix in EVICT_SUFFIXES and evict is None and name not in VANILLA:
            evict = EVICT_SUFFIXES[suffix]
        elif suffix.startswith(CHUNK_SUFFIX) and suffix[len(CHUNK_SUFFIX):].isdigit() and chunk is None:
            chunk = int(suffix[len(CHUNK_SUFFIX):])
            if chunk < 1:
                raise ValueError(f"settings: chunked-prefill size in {setting!r} must be positive")
        else:
            raise ValueError(f"settings: unknown, repeated or misplaced suffix '{suffix}' in {setting!r}; allowed: "
                             f"{allowed} (eviction suffixes on SWAA presets only, each suffix once)")
    return name, evict, chunk


def setting_config(setting: str):
    """The SWAAConfig of a SWAA setting ('PRESET' with optional suffixes); ValueError naming the allowed values."""
    from swaa_sglang.config import PRESETS, SWAAConfig, preset_config

    name, evict, _ = split_setting(setting)
    if name not in PRESETS:
        raise ValueError(f"settings: unknown setting {setting!r}; allowed: {', '.join(VANILLA)}, or a preset "
                         f"({', '.join(PRESETS)}), optionally with '+evict', '+noevict', '+chunkN'")
    config = preset_config(name)
    if evict is not None:
        config = SWAAConfig.from_dict({**config.to_dict(), "evict_window": evict})
    return config


def chunked_prefill_size(setting: str) -> int:
    """The setting's chunked-prefill size: its +chunkN, else the benchmarks' default."""
    return split_setting(setting)[2] or DEFAULT_CHUNKED_PREFILL


def setting_override_json(setting: str) -> str:
    """A SWAA setting as SGLang's json_model_override_args (the way the plugin carries it to every process)."""
    return json.dumps({"swaa": setting_config(setting).to_dict()})


def engine_kwargs(setting: str) -> dict[str, Any]:
    """The sglang.Engine keyword arguments that select a setting's backend (and its +chunkN, if any)."""
    name, _, chunk = split_setting(setting)
    extra = {} if chunk is None else {"chunked_prefill_size": chunk}
    if name in VANILLA:
        return {"attention_backend": "flashinfer", **VANILLA[name], **extra}
    return {"attention_backend": "swaa", "json_model_override_args": setting_override_json(setting), **extra}


def server_flags(setting: str) -> list[str]:
    """A setting as command-line flags of SGLang's tools started through the plugin (launch_server, the
    ``swaa_sglang.serving.bench`` wrappers): the same choice as :func:`engine_kwargs`."""
    name, evict, chunk = split_setting(setting)
    extra = [] if chunk is None else ["--chunked-prefill-size", str(chunk)]
    if name in VANILLA:
        return ["--attention-backend", "flashinfer",
                *(f"--{flag.replace('_', '-')}" for flag, on in VANILLA[name].items() if on), *extra]
    setting_config(setting)  # refuse an unknown name here, not in the tool's process
    return ["--swaa-preset", name, *([] if evict is None else ["--swaa-evict-window", "on" if evict else "off"]),
            *extra]


def parse_settings(parser: argparse.ArgumentParser, text: str, repeat_hint: str = "") -> list[str]:
    """``--settings`` split once and checked: every name known, none twice (a parser error names the field)."""
    settings = [s.strip() for s in text.split(",") if s.strip()]
    if not settings:
        parser.error(f"--settings: empty; {SETTINGS_HELP}")
    repeated = sorted({s for s in settings if settings.count(s) > 1})
    if repeated:
        parser.error(f"--settings: {', '.join(repeated)} given more than once{repeat_hint}")
    for s in settings:
        try:
            if split_setting(s)[0] not in VANILLA:
                setting_config(s)
        except ValueError as e:
            parser.error(f"--{e}")
    return settings


def parse_positive_ints(parser: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    """A comma list of positive integers, or a parser error naming ``flag``."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        parser.error(f"{flag}: expected positive integers separated by commas; got {text!r}")
    return values


# -- argparse -------------------------------------------------------------------------------------
def make_parser(doc: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of ``doc`` and whose --help shows the defaults."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)


def add_engine_args(parser: argparse.ArgumentParser, settings: str, mem: float,
                    mem_help: str = "mem_fraction_static") -> None:
    """--settings, --model and --mem: which settings to compare, on which model shape, with how much memory."""
    parser.add_argument("--settings", default=settings, help=SETTINGS_HELP)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="dir with config.json (dummy weights)")
    parser.add_argument("--mem", type=float, default=mem, help=mem_help)


def add_launch_args(parser: Any, port: int = 30000) -> None:
    """--port, --launch-timeout and --launch-command: how a script starts a server of its own (``parser``:
    an ArgumentParser or one of its argument groups)."""
    parser.add_argument("--port", type=int, default=port, help="port of the launched server")
    parser.add_argument("--launch-timeout", type=float, default=900, help="seconds to wait for the server's /health")
    parser.add_argument("--launch-command", default=shlex.join(LAUNCH_COMMAND),
                        help="the server command before its flags")


# -- an Engine, a server ------------------------------------------------------------------------------
def start_engine(setting: str, model: str, context_len: int, mem: float, **extra: Any):
    """A dummy-weight sglang.Engine for one setting, fed token ids (no tokenizer)."""
    import sglang

    kwargs = {"chunked_prefill_size": DEFAULT_CHUNKED_PREFILL, **engine_kwargs(setting), **extra}
    return sglang.Engine(model_path=model, load_format="dummy", skip_tokenizer_init=True, mem_fraction_static=mem,
                         context_length=context_len, log_level="error", **kwargs)


LAUNCH_COMMAND = (sys.executable, "-m", "swaa_sglang.launch_server")


def http_status(url: str, timeout: float = 5) -> int:
    """The HTTP status of a GET (0 if nothing answered)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def launch_server(launch_args: Sequence[str], port: int, log_path: str | Path, timeout: float,
                  command: Sequence[str] = LAUNCH_COMMAND) -> tuple[subprocess.Popen, str]:
    """Start ``command ARGS --port PORT`` in a session of its own (so that :func:`stop_server` ends all of
    SGLang's processes), wait for ``/health`` and return the process and its URL. SystemExit when the
    port already answers (another server would be measured instead), or the server exits or is not up
    within ``timeout`` seconds."""
    url = f"http://127.0.0.1:{port}"
    if http_status(f"{url}/health") != 0:
        raise SystemExit(f"port {port} already answers: another server is running there; stop it or pick another --port")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*command, *launch_args, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before /health answered; log: {log_path}")
        if http_status(f"{url}/health") == 200:
            return proc, url
        time.sleep(2)
    stop_server(proc)
    raise SystemExit(f"server did not answer /health within {timeout:.0f} s; log: {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's session, SIGKILL after 60 s."""
    for sig, wait_s in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


# -- results --------------------------------------------------------------------------------------
def gpu_name() -> str:
    """The CUDA device's name, or 'none'."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "none"


def run_meta(model: str, **extra: Any) -> dict[str, Any]:
    """What every result file records: the GPU, the date, the model shape and the command line."""
    return {"gpu": gpu_name(), "date": date.today().isoformat(), "model": model, "argv": sys.argv, **extra}


def write_json(path: str | Path | None, result: dict[str, Any]) -> None:
    """Rewrite the result file (called after each measured part, so that a killed run keeps them)."""
    if path:
        Path(path).write_text(json.dumps(result, indent=1))


def measure_settings(settings: Sequence[str], measure: Callable[[str, Any, Callable[[dict], None]], None], a: Any,
                     result: dict[str, Any]) -> None:
    """``measure(setting, a, emit)`` for each setting; every row it emits is appended to
    ``result["rows"]`` and the JSON rewritten at once (``a.out``): a run killed later keeps what it measured."""

    def emit(row: dict) -> None:
        result["rows"].append(row)
        write_json(a.out, result)

    for setting in settings:
        measure(setting, a, emit)


def package_version(dist: str) -> str | None:
    """An installed distribution's version from its metadata (None if absent), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


class PartialWriter:
    """Every record appended to ``OUT.partial.jsonl`` as it arrives (started empty), so a run that
    crashes late keeps its answers; :meth:`done` removes the file once the full result is written.
    Does nothing without ``--out``."""

    def __init__(self, out: str | None):
        self.path = Path(out + ".partial.jsonl") if out else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("", encoding="utf-8")

    def __call__(self, record: dict) -> None:
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def done(self) -> None:
        if self.path:
            self.path.unlink(missing_ok=True)
