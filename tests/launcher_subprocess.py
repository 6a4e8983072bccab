"""Run ``swaa_sglang.launch_server.prepare_server_args`` in a fresh process (CPU).

ServerArgs hooks are process-global, so each case gets its own interpreter. ``report``
is Python that turns the prepared ``sa`` (SGLang's ServerArgs) into a JSON-able ``out``.
Returns ``out``, or ``{"error": message}`` when the start-up checks refuse the arguments.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

QWEN3_CONFIG = str(Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "qwen3-0.6b")

_CODE = (
    "import json, sys\n"
    "from swaa_sglang.launch_server import prepare_server_args\n"
    "try:\n"
    "    sa = prepare_server_args(sys.argv[1:])\n"
    "except ValueError as e:\n"
    "    print('ERROR:' + str(e)); sys.exit(0)\n"
    "{report}\n"
    "print('ARGS:' + json.dumps(out))\n"
)


def prepare_in_subprocess(report: str, *argv: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _CODE.format(report=report), "--model-path", QWEN3_CONFIG, "--load-format", "dummy",
         "--device", "cpu", *argv], capture_output=True, text=True, timeout=600,
    )
    line = [ln for ln in r.stdout.splitlines() if ln.startswith(("ARGS:", "ERROR:"))]
    assert line, r.stderr[-3000:]
    if line[-1].startswith("ERROR:"):
        return {"error": line[-1][6:]}
    return json.loads(line[-1][5:])
