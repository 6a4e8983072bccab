"""Admission with window eviction under load: more 128K-token requests than the SWA pool holds as
whole-chunk locks (the H200 run where 104 of them made no request finish in 11 minutes).

tests/scheduler_replay.py replays SGLang's scheduler loop around its real admission, allocator,
pool and tree classes and our SWAASinkRadixCache, at the H200 run's sizes divided by 32. With the
cache as built (it switches on SGLang's leaf split on insert) the full pool decides: 99 requests
run at once, none is retracted, every prompt token is prefilled once. The control, with the split
switched back off, shows the thrash: about 54 run at once, and retracted requests are prefilled again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPLAY = Path(__file__).resolve().parent / "scheduler_replay.py"


def _replays(*variants: list[str]) -> list[dict]:
    """Run the replay once per argument list, in parallel subprocesses (it patches SGLang globals)."""
    procs = [subprocess.Popen([sys.executable, str(REPLAY), "--scale", "32", "--requests", "104", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in variants]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
    return results


def test_long_requests_beyond_the_swa_lock_budget_are_admitted_by_the_full_pool_without_retraction():
    fixed, control = _replays([], ["--control-no-split"])
    for r in (fixed, control):
        assert r["drained"] and r["finished"] == r["requests"] == 104 and r["aborted"] == 0
    # full pool (13.1M / 32) over 4,096 + 16 tokens per request: 99 at once
    assert fixed["peak_running"] == fixed["config"]["full"] // (fixed["config"]["L"] + fixed["config"]["max_new"]) == 99
    assert fixed["retracted"] == 0 and fixed["prefill_tokens"] == fixed["prompt_tokens"]
    # the control: whole-chunk SWA locks cap the running set near 54, and decode retracts parked
    # requests whose prefill is then done again (at full scale: about one retraction per decode step)
    assert control["peak_running"] < 60
    assert control["retracted"] > 0 and control["prefill_tokens"] > control["prompt_tokens"]


def test_the_cache_switches_the_leaf_split_on_and_refuses_an_explicit_off(monkeypatch):
    from attention_backends.eviction import SPLIT_LEAF_ENV, require_split_leaf_on_insert

    monkeypatch.setenv(SPLIT_LEAF_ENV, "1")  # recorded first, so teardown restores what was there before
    monkeypatch.delenv(SPLIT_LEAF_ENV)
    require_split_leaf_on_insert()
    from sglang.srt.environ import envs

    assert envs.SGLANG_OPT_SWA_SPLIT_LEAF_ON_INSERT.get() is True
    monkeypatch.setenv(SPLIT_LEAF_ENV, "1")
    require_split_leaf_on_insert()
    monkeypatch.setenv(SPLIT_LEAF_ENV, "0")
    with pytest.raises(ValueError, match=r"SGLANG_OPT_SWA_SPLIT_LEAF_ON_INSERT='0': window eviction needs"):
        require_split_leaf_on_insert()
