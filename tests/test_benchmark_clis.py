"""Benchmark scripts: --help works without a GPU (their runs happen on the GPU host)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script, words", [
    ("bench_attention_ops.py", ["--window", "--sinks", "--backends", "--quick", "--out"]),
    ("bench_e2e.py", ["--settings", "--lengths", "--offline-requests", "--quick", "--out"]),
])
def test_help(script, words):
    r = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for w in words:
        assert w in r.stdout
