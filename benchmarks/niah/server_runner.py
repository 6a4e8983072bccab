"""The server runners: greedy answers from an OpenAI-compatible server on loopback (``server``: one
that is already running, with one SWAA config), or from one server per distinct config, started
here one after another (``launch``).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from common import launch_server, stop_server
from swaa_sglang.config import SWAAConfig

from .benchmark import Answer, run_benchmark
from .settings import Setting, build_settings
from .task import DEFAULT_MAX_NEW_TOKENS, Corpus, NeedleSample

logger = logging.getLogger("quality_niah")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServerRunner:
    """Greedy answers from an OpenAI-compatible server on loopback (one SWAA config: the server's)."""

    name = "server"

    def __init__(
        self,
        url: str,
        setting: Setting,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        endpoint: str = "completions",
        prompt_format: str = "ids",
        model: str | None = None,
        timeout: float = 600.0,
    ):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or parsed.hostname not in LOOPBACK_HOSTS:
            raise ValueError(f"server-url: only loopback servers (http://127.0.0.1:PORT); got {url!r}")
        if endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint: 'completions' or 'chat'; got {endpoint!r}")
        if prompt_format not in ("ids", "text"):
            raise ValueError(f"prompt-format: 'ids' or 'text'; got {prompt_format!r}")
        self.url = url.rstrip("/")
        self.setting = setting
        self.max_new_tokens = max_new_tokens
        self.endpoint = endpoint
        self.prompt_format = prompt_format
        self.timeout = timeout
        self._model = model

    def model_name(self) -> str:
        if self._model is None:
            import requests

            r = requests.get(f"{self.url}/v1/models", timeout=self.timeout)
            r.raise_for_status()
            self._model = r.json()["data"][0]["id"]
        return self._model

    def describe(self) -> dict[str, Any]:
        return {
            "runner": "server",
            "server_url": self.url,
            "endpoint": self.endpoint,
            "prompt_format": self.prompt_format if self.endpoint == "completions" else "messages",
            "model": self._model,
        }

    def request(self, sample: NeedleSample) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of the request for ``sample``: greedy, ``max_new_tokens`` at most."""
        body: dict[str, Any] = {"model": self.model_name(), "max_tokens": self.max_new_tokens, "temperature": 0.0}
        if self.endpoint == "chat":
            body["messages"] = [dict(m) for m in sample.messages]
            return "/v1/chat/completions", body
        body["prompt"] = list(sample.input_ids) if self.prompt_format == "ids" else sample.prompt
        return "/v1/completions", body

    def answer(self, sample: NeedleSample, settings: Sequence[Setting]) -> dict[str, Answer]:
        import requests

        if [s.name for s in settings] != [self.setting.name]:
            raise ValueError(f"the server runs one setting ({self.setting.name}); got {[s.name for s in settings]}")
        path, body = self.request(sample)
        t0 = time.perf_counter()
        r = requests.post(self.url + path, json=body, timeout=self.timeout)
        r.raise_for_status()
        data = r.json()
        choice = data["choices"][0]
        text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
        tokens = (data.get("usage") or {}).get("completion_tokens", -1)
        return {self.setting.name: Answer(text or "", tokens, time.perf_counter() - t0)}


def server_groups(windows: Sequence[int], sinks: int, names: Sequence[str]) -> list[dict[str, Any]]:
    """One server per distinct SWAA config, with the (window, setting) pairs it answers: full
    attention is the same config at every window, so one server answers it for all of them."""
    groups: dict[str, dict[str, Any]] = {}
    for w in windows:
        for s in build_settings(w, sinks, names):
            g = groups.setdefault(s.config.to_json(), {"config": s.config, "settings": []})
            g["settings"].append((w, s))
    return list(groups.values())


def server_flags(config: SWAAConfig, config_file: Path) -> list[str]:
    """Full attention runs stock SGLang (the flashinfer backend, no SWAA): the baseline users
    compare against. Any other config runs the swaa backend with the config as a file."""
    if not config.enabled:
        return ["--attention-backend", "flashinfer"]
    config_file.write_text(config.to_json() + "\n", encoding="utf-8")
    return ["--swaa-config", str(config_file)]


# what one server runs: (url, {setting name: {window: Setting}}, its share of the deadline) ->
# (records, the model name the server reported)
RunOnServer = Callable[[str, dict[str, dict[int, Setting]], float | None], tuple[list[dict[str, Any]], str]]


def for_each_server(args: argparse.Namespace, model_path: str, windows: Sequence[int], names: Sequence[str],
                    log_dir: Path, run_on_server: RunOnServer,
                    deadline: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Start one server per distinct config (:func:`server_groups`), one at a time, and run
    ``run_on_server`` on each; returns the records and what each server was (flags, log, start-up
    seconds, error). A server that does not start or dies mid-run is recorded and the next one runs.
    ``deadline`` is shared out evenly over the servers still to run, so a budget does not starve
    the last settings. Uses ``args.launch_command``, ``sinks``, ``launch_args``, ``port``, ``launch_timeout``."""
    command = shlex.split(args.launch_command)
    log_dir.mkdir(parents=True, exist_ok=True)
    groups = server_groups(windows, args.sinks, names)
    records: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        label = "_".join(dict.fromkeys(s.name for _, s in group["settings"])).replace("+", "-")
        flags = server_flags(group["config"], log_dir / f"swaa_config_{i}_{label}.json")
        launch_args = shlex.join(["--model-path", model_path, *flags]) + " " + (args.launch_args or "")
        log = log_dir / f"server_{i}_{label}.log"
        t0 = time.time()
        logger.info("server %d/%d (%s): %s", i + 1, len(groups), label, launch_args)
        info: dict[str, Any] = {"settings": sorted({s.name for _, s in group["settings"]}),
                                "windows": sorted({w for w, _ in group["settings"]}),
                                "config": group["config"].to_dict(), "flags": launch_args.strip(), "log": log.name}
        servers.append(info)
        try:
            proc, url = launch_server(shlex.split(launch_args), args.port, log, args.launch_timeout, command)
        except SystemExit as e:  # this setting's server did not come up: record it, go on with the next
            info["error"] = str(e)
            logger.error("server %d (%s) did not start: %s", i + 1, label, e)
            continue
        info["start_seconds"] = round(time.time() - t0, 1)
        try:
            share = None if deadline is None else time.time() + (deadline - time.time()) / (len(groups) - i)
            by_name: dict[str, dict[int, Setting]] = {}
            for w, s in group["settings"]:
                by_name.setdefault(s.name, {})[w] = s
            got, info["model"] = run_on_server(url, by_name, share)
            records += got
        except Exception as e:  # e.g. the server died mid-run: keep what it answered, go on
            info["error"] = f"{type(e).__name__}: {e}"
            logger.error("server %d (%s) failed: %s", i + 1, label, info["error"])
        finally:
            stop_server(proc)
        info["seconds"] = round(time.time() - t0, 1)
    return records, servers


def run_launched(
    args: argparse.Namespace,
    model_path: str,
    tokenizer: Any,
    corpus: Corpus,
    lengths: Sequence[int],
    windows: Sequence[int],
    names: Sequence[str],
    positions: Sequence[str],
    depths: Sequence[float],
    log_dir: Path,
    on_record: Callable[[dict], None] | None = None,
    deadline: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every needle setting through a server of its own (:func:`for_each_server`)."""

    def run_on_server(url: str, by_name: dict[str, dict[int, Setting]], share: float | None):
        records: list[dict[str, Any]] = []
        model = ""
        for by_window in by_name.values():
            runner = ServerRunner(url, next(iter(by_window.values())), args.max_new_tokens, args.endpoint,
                                  args.prompt_format, args.server_model)
            records += run_benchmark(
                runner, tokenizer, corpus, lengths, sorted(by_window), lambda w, bw=by_window: [bw[w]], args.samples,
                args.seed, args.max_new_tokens, positions, depths, not args.no_answer_prefix,
                progress=not args.no_progress, on_record=on_record, deadline=share,
            )
            model = runner.model_name()
        return records, model

    return for_each_server(args, model_path, windows, names, log_dir, run_on_server, deadline)
