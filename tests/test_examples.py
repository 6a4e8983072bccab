"""The runnable examples in launch/examples/, each run as a user would run it (in a subprocess).

CPU: every example starts (its imports and argument parser, through --help); the GPU
examples say in one line that they need a GPU; the HF reference evaluation end to end on
the real SmolLM2 weights; the frontend program, the OpenAI client and curl.sh against a fake
OpenAI-compatible/SGLang server started here on 127.0.0.1, which records each request
so that its shape is checked (roles, ``stream: true``, the select choices, ...).

GPU (skipped without CUDA): the offline Engine example, and a real SWAA server
(launch/examples/serve.sh, i.e. ``python -m swaa_sglang.launch_server --swaa-preset
balanced``) queried by the frontend program, the OpenAI client and curl.sh.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from fake_http import JSONHandler

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "launch" / "examples"
PY_EXAMPLES = ["hf_reference_eval.py", "frontend_program.py", "openai_client.py", "offline_engine.py"]
SH_EXAMPLES = ["curl.sh", "serve.sh"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)  # this checkout first
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def run_example(name: str, *args: str, timeout: float = 120, env: dict | None = None) -> str:
    """Run one example; fail with its output if it exits non-zero. Returns stdout."""
    cmd = ["bash" if name.endswith(".sh") else sys.executable, str(EXAMPLES / name), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-5000:]}"
    return proc.stdout


# -- start-up ------------------------------------------------------------------------------
# importing sglang or transformers takes 15-25 s a process
SLOW_TO_START = {"hf_reference_eval.py", "frontend_program.py", "offline_engine.py"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TO_START else n
                                  for n in PY_EXAMPLES + SH_EXAMPLES])
def test_every_example_starts(name):
    """--help runs an example's imports (from this package layout) and its argument parser, and exits 0."""
    out = run_example(name, "--help", timeout=180)
    assert re.search(r"usage", out, re.IGNORECASE), out


def test_the_launchers_cpu_pointer_is_a_working_hf_reference_command():
    """The CPU command that the launcher's no-GPU message and --help give parses with the HF reference's CLI
    to the setting it names; the benchmark command in --help names the wrapper's real tools."""
    from swaa_sglang import hf, preset_config
    from swaa_sglang.cli import config_from_args
    from swaa_sglang.serving.bench import TOOLS
    from swaa_sglang.serving.launcher import EPILOG, HF_REFERENCE_COMMAND, NO_CUDA_MESSAGE

    assert HF_REFERENCE_COMMAND in NO_CUDA_MESSAGE and HF_REFERENCE_COMMAND in EPILOG
    argv = shlex.split(HF_REFERENCE_COMMAND)
    assert argv[:3] == ["python", "-m", "swaa_sglang.hf"]
    args = hf.build_parser().parse_args(argv[3:])
    assert config_from_args(args) == preset_config("balanced") and args.prompt
    bench = next(line.split() for line in EPILOG.splitlines() if "swaa_sglang.serving.bench" in line)
    assert bench[:3] == ["python", "-m", "swaa_sglang.serving.bench"] and bench[3].split("|") == list(TOOLS)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on a machine without a GPU; this one has a CUDA GPU")
def test_offline_engine_without_a_gpu_says_so_in_one_line():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "offline_engine.py")], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: this example needs an NVIDIA GPU (CUDA); none found. For CPU use, run the HF reference: "
        "python launch/examples/hf_reference_eval.py"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def _python_shim(bin_dir: Path, body: str) -> dict[str, str]:
    """An environment whose `python` (what serve.sh runs) is a shell script with ``body``."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "python").chmod(0o755)
    env = _env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.pop("PORT", None)  # serve.sh's default port, unless a test sets it
    return env


@pytest.mark.slow
def test_serve_sh_commands(tmp_path, smollm2_path):
    """serve.sh runs the documented commands, and the preset command is a valid SWAA server config."""
    argv_file = tmp_path / "argv"
    env = _python_shim(tmp_path / "bin", f'printf "%s\\n" "$@" > "{argv_file}"')  # record, start nothing
    run_example("serve.sh", env=env)
    assert argv_file.read_text().splitlines() == ["-m", "swaa_sglang.launch_server", "--swaa-preset", "balanced",
                                                  "--port", "30000"]
    run_example("serve.sh", "recipe", "--log-level", "error", env={**env, "PORT": "30123"})
    recipe = argv_file.read_text().splitlines()
    assert recipe == ["-m", "sglang.launch_server", "--config", "launch/qwen3-4b-balanced.yaml", "--port", "30123",
                      "--log-level", "error"]
    assert (REPO / recipe[3]).is_file()

    run_example("serve.sh", "preset", "--log-level", "error", env={**env, "PORT": "30123"})
    preset = argv_file.read_text().splitlines()
    code = (
        "import json, sys\n"
        "from swaa_sglang.launch_server import prepare_server_args\n"
        "sa = prepare_server_args(sys.argv[1:] + ['--device', 'cpu'])\n"
        "print('ARGS:' + json.dumps([sa.attention_backend, sa.json_model_override_args, sa.model_path, sa.port]))\n"
    )
    assert preset[:2] == ["-m", "swaa_sglang.launch_server"]
    r = subprocess.run([sys.executable, "-c", code, *preset[2:]], env=_env(), capture_output=True, text=True, timeout=300)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("ARGS:")]
    assert line, r.stderr[-3000:]
    backend, override, model, port = json.loads(line[-1][5:])
    from swaa_sglang import preset_config
    from swaa_sglang.serving.server_args import config_from_override_args

    assert backend == "swaa" and port == 30123 and model == smollm2_path
    # the server receives the preset with window eviction decided: off, no layer of balanced is windowed
    served = config_from_override_args(override)
    assert served.evict_window is False
    assert served == preset_config("balanced").with_eviction_resolved(30)


def test_serve_sh_rejects_unknown_mode():
    proc = subprocess.run(["bash", str(EXAMPLES / "serve.sh"), "bogus"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "unknown mode" in proc.stderr


# -- the HF reference, real weights ---------------------------------------------------------
ROW = re.compile(r"^\| (full attention|SWAA) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| (.*) \|$", re.MULTILINE)


@pytest.mark.slow
def test_hf_reference_eval_runs_with_defaults(smollm2_path):
    t0 = time.monotonic()
    out = run_example("hf_reference_eval.py", timeout=600)
    print(f"hf_reference_eval.py took {time.monotonic() - t0:.1f} s\n{out}")
    rows = {m.group(1): m.groups()[1:] for m in ROW.finditer(out)}
    assert set(rows) == {"full attention", "SWAA"}, out
    full, swaa = float(rows["full attention"][0]), float(rows["SWAA"][0])
    assert math.isfinite(full) and math.isfinite(swaa) and full > 1 and swaa > 1, out
    assert full != swaa, f"the window changed nothing: {out}"
    assert '"sliding_window_size": 256' in out and "1024 tokens" in out, out
    assert rows["full attention"][3].strip(), "no greedy answer under full attention"


# -- a fake server: SGLang's native /generate and the OpenAI-compatible API -----------------------
FAKE_MODEL_PATH = "/models/SmolLM2-135M-Instruct"
STREAM_PIECES = ["1", ",", " 2", ",", " 3", ",", " 4", ",", " 5"]


class FakeServer:
    """Minimal valid responses for what the examples call; every request is recorded."""

    def __init__(self):
        self.requests: list[tuple[str, str, object]] = []  # (method, path, JSON body)
        self.lock = threading.Lock()
        fake = self

        class Handler(JSONHandler):
            def do_GET(self):
                fake._record("GET", self.path, None)
                if self.path == "/get_model_info":
                    self._json({"model_path": FAKE_MODEL_PATH, "tokenizer_path": FAKE_MODEL_PATH, "is_generation": True})
                else:
                    self._json({"error": f"no GET {self.path}"}, 404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                fake._record("POST", self.path, body)
                if self.path == "/generate":
                    self._json(fake.generate(body))
                elif self.path == "/v1/chat/completions" and body.get("stream"):
                    self._sse([fake.chat_chunk(piece, None) for piece in STREAM_PIECES] + [fake.chat_chunk(None, "stop")])
                elif self.path == "/v1/chat/completions":
                    self._json(fake.chat_completion())
                elif self.path == "/v1/completions":
                    self._json(fake.completion())
                else:
                    self._json({"error": f"no POST {self.path}"}, 404)

            def _sse(self, events):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _record(self, method, path, body):
        with self.lock:
            self.requests.append((method, path, body))

    def posts(self, path):
        return [body for method, p, body in self.requests if method == "POST" and p == path]

    # SGLang's /generate, as RuntimeEndpoint reads it
    @staticmethod
    def generate(body):
        text, params = body.get("text"), body.get("sampling_params", {})
        if isinstance(text, list):  # select: one scoring request per choice
            out = []
            for t in text:
                # token healing: the first scored token is the prompt's last character
                logprob = -0.1 if t.endswith(" negative") else -2.5
                meta = {"prompt_tokens": len(t.split()), "completion_tokens": 0,
                        "input_token_logprobs": [[-1.0, 1, ":"], [logprob, 2, t.rsplit(":", 1)[1]]],
                        "output_token_logprobs": []}
                out.append({"text": "", "meta_info": meta})
            return out
        meta = {"prompt_tokens": len(text.split()), "completion_tokens": 0}
        if params.get("max_new_tokens") == 0:  # prefix caching / select's first step
            return {"text": "", "meta_info": meta}
        m = re.search(r"capital of (\w+) is$", text)
        reply = f" Capital-of-{m.group(1)}." if m else f" Reply-{text.count('<|im_start|>user')}."
        return {"text": reply, "meta_info": {**meta, "completion_tokens": 3}}

    # OpenAI-compatible API
    @staticmethod
    def chat_completion():
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 31, "completion_tokens": 2, "total_tokens": 33}}

    @staticmethod
    def chat_chunk(content, finish_reason):
        delta = {"role": "assistant", "content": content} if content is not None else {}
        return {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    @staticmethod
    def completion():
        return {"id": "cmpl-3", "object": "text_completion", "created": 0, "model": "fake",
                "choices": [{"index": 0, "text": " Paris, a city of", "finish_reason": "length", "logprobs": None}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21}}


@pytest.fixture
def fake_server():
    server = FakeServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.mark.slow  # the frontend program imports sglang (~20 s)
def test_frontend_program_against_fake_server(fake_server):
    out = run_example("frontend_program.py", "--url", fake_server.url)
    lines = out.splitlines()
    assert f"server model: {FAKE_MODEL_PATH}" in lines
    assert "[gen] capital of France: Capital-of-France." in lines
    assert "[select] sentiment: negative" in lines  # the choice the fake scores highest
    for country in ("Japan", "Italy", "Brazil"):  # run_batch, results in input order
        assert f"[batch] capital of {country}: Capital-of-{country}." in lines
    chat_lines = [line for line in lines if line.startswith("[chat]")]
    assert chat_lines == [
        "[chat] system: You are a helpful assistant. Answer briefly.",
        "[chat] user: Name a primary color.",
        "[chat] assistant: Reply-1.",
        "[chat] user: Name another one.",
        "[chat] assistant: Reply-2.",
    ]

    assert fake_server.requests[0][:2] == ("GET", "/get_model_info")
    generate = fake_server.posts("/generate")
    gens = [b for b in generate if isinstance(b["text"], str) and b["sampling_params"].get("max_new_tokens")]
    capital = [b for b in gens if "capital of" in b["text"]]
    assert sorted(re.search(r"capital of (\w+) is$", b["text"]).group(1) for b in capital) == [
        "Brazil", "France", "Italy", "Japan"]
    for b in capital:
        assert b["sampling_params"]["max_new_tokens"] == 16 and b["sampling_params"]["temperature"] == 0
        assert "\n" in b["sampling_params"]["stop"]
    # select: the choices scored in one batched request with logprobs
    scoring = [b for b in generate if isinstance(b["text"], list)]
    assert len(scoring) == 1 and scoring[0]["return_logprob"] is True
    assert [t.rsplit(":", 1)[1] for t in scoring[0]["text"]] == [" positive", " negative"]
    assert all(t.startswith("Review: The food was cold") for t in scoring[0]["text"])
    # multi-turn: ChatML roles (SmolLM2's template), the second turn carries the first answer
    chat = [b for b in gens if "<|im_start|>" in b["text"]]
    assert len(chat) == 2
    assert chat[1]["text"] == (
        "<|im_start|>system\nYou are a helpful assistant. Answer briefly.<|im_end|>\n"
        "<|im_start|>user\nName a primary color.<|im_end|>\n"
        "<|im_start|>assistant\n Reply-1.<|im_end|>\n"
        "<|im_start|>user\nName another one.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "<|im_end|>" in chat[1]["sampling_params"]["stop"]


def _check_openai_requests(server):
    chats = server.posts("/v1/chat/completions")
    assert len(chats) == 2
    plain, streamed = chats
    assert not plain.get("stream") and [m["role"] for m in plain["messages"]] == ["system", "user"]
    assert plain["messages"][1]["content"] == "What is the capital of France?"
    assert plain["max_tokens"] == 64 and plain["temperature"] == 0 and plain["model"] == "default"
    assert streamed["stream"] is True and [m["role"] for m in streamed["messages"]] == ["user"]
    (completion,) = server.posts("/v1/completions")
    assert completion["prompt"] == "The capital of France is" and completion["max_tokens"] == 16
    assert not completion.get("stream")


def test_openai_client_against_fake_server(fake_server):
    out = run_example("openai_client.py", "--url", fake_server.url)
    lines = out.splitlines()
    assert "[chat] Paris." in lines
    assert "[chat] usage: 31 prompt + 2 completion tokens" in lines
    assert "[stream] " + "".join(STREAM_PIECES) in lines  # every piece, in order, on one line
    assert "[completion] The capital of France is Paris, a city of" in lines
    _check_openai_requests(fake_server)


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_curl_sh_against_fake_server(fake_server):
    out = run_example("curl.sh", fake_server.url)
    assert json.loads(out.split("[chat]\n")[1].split("\n[stream]")[0])["choices"][0]["message"]["content"] == "Paris."
    assert out.count("chat.completion.chunk") == len(STREAM_PIECES) + 1 and "data: [DONE]" in out
    assert json.loads(out.split("[completion]\n")[1])["object"] == "text_completion"
    _check_openai_requests(fake_server)


# -- GPU: the offline Engine and a real server ------------------------------------------------
@pytest.mark.gpu
@pytest.mark.slow
def test_offline_engine(smollm2_gpu_path):
    # A window shorter than the prompts, so that SWAA is active.
    out = run_example("offline_engine.py", "--window", "16", "--keep-first", "4", "--max-new-tokens", "24", timeout=600)
    print(out)
    assert '"sliding_window_size": 16' in out
    answers = re.findall(r"^\[(\d+) tokens\] .*\n    (.*)$", out, re.MULTILINE)
    assert len(answers) == 4, out
    assert all(int(n) > 0 and text.strip() for n, text in answers), out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}:\n{log.read_text()[-5000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:  # refused while starting, or 503 until the model is loaded
            pass
        time.sleep(2)
    pytest.fail(f"server not healthy after {timeout} s:\n{log.read_text()[-5000:]}")


@pytest.mark.gpu
@pytest.mark.slow
def test_clients_against_real_server(smollm2_gpu_path, tmp_path):
    # serve.sh runs `python -m swaa_sglang.launch_server --swaa-preset balanced --port $PORT`;
    # `python` here is this interpreter.
    env = _python_shim(tmp_path / "bin", f'exec "{sys.executable}" "$@"')
    port = _free_port()
    env["PORT"] = str(port)
    log = tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            ["bash", str(EXAMPLES / "serve.sh"), "preset", "--host", "127.0.0.1", "--mem-fraction-static", "0.5"],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_healthy(url, server, log)
        out = run_example("frontend_program.py", "--url", url, timeout=300)
        print(out)
        values = dict(re.findall(r"^\[(gen|select)\] [^:]+: ?(.*)$", out, re.MULTILINE))
        assert values["gen"].strip(), out
        assert values["select"] in ("positive", "negative"), out
        assert len(re.findall(r"^\[batch\] capital of \w+: ?\S", out, re.MULTILINE)) == 3, out
        assistant = re.findall(r"^\[chat\] assistant: (.*)$", out, re.MULTILINE)
        assert len(assistant) == 2 and all(a.strip() for a in assistant), out

        out = run_example("openai_client.py", "--url", url, timeout=300)
        print(out)
        for tag in ("[chat] ", "[stream] ", "[completion] The capital of France is"):
            line = next(line for line in out.splitlines() if line.startswith(tag))
            assert line[len(tag):].strip(), out

        if shutil.which("curl"):
            out = run_example("curl.sh", url, timeout=300)
            print(out)
            assert "data: [DONE]" in out and '"text_completion"' in out, out
    finally:
        _kill_group(server)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (it was started in a new session), then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
