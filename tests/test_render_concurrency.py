"""benchmarks/render_concurrency.py on a hand-made bench_concurrency result (CPU, fast)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import render_concurrency as rc  # noqa: E402


def _row(setting, n, loads, partial=False):
    return {"setting": setting, "requests": n, "partial": partial, "max_total_num_tokens": 1000, "loads": loads}


def _load(t, running, waiting, usage):
    return {"t": t, "num_running_reqs": running, "num_waiting_reqs": waiting, "num_used_tokens": int(usage * 1000),
            "token_usage": usage, "total_prefill_uncached_tokens": 0}


def test_phases_and_peaks_come_from_the_samples(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"rows": [
        _row("vanilla", 4, [_load(0, 0, 4, 0.0), _load(5, 2, 2, 0.97), _load(10, 1, 0, 0.5)], partial=True),
        _row("sink100-2k", 4, [_load(0, 0, 4, 0.0), _load(5, 4, 0, 0.2)])]}))
    rows = rc.phases([str(f)])
    assert [r["label"] for r in rows] == ["vanilla, 4 requests (partial)", "sink100-2k, 4 requests"]
    png = tmp_path / "c.png"
    assert rc.main([str(f), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "vanilla, 4 requests (partial): 3 samples, peak running 2, peak KV pool use 97.0%" in out
    assert "sink100-2k, 4 requests: 2 samples, peak running 4, peak KV pool use 20.0%" in out
    assert png.stat().st_size > 10_000


def test_a_phase_without_samples_is_refused(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"rows": [_row("vanilla", 4, [])]}))
    with pytest.raises(SystemExit, match="vanilla x4 has no load samples"):
        rc.phases([str(f)])
