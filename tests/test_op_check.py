"""The in-server op check itself (CPU): it must pass a right output and flag a wrong one."""

from __future__ import annotations

import json
import types

import pytest
import torch

from attention_backends.op_check import OpCheck
from swaa_sglang import SWAAConfig, swaa_attention


def _batch(cfg: SWAAConfig, layer_id: int, mode: str, prompt_lens: list[int] | None = None):
    """A two-request batch and its right output; ``prompt_lens`` marks extend rows at or past them as generated."""
    g = torch.Generator().manual_seed(0)
    hq, hk, d = 4, 2, 8
    seq_lens, q_lens = ([30, 17], [1, 1]) if mode == "decode" else ([30, 17], [12, 17])
    pool_k, pool_v = torch.randn(64, hk, d, generator=g), torch.randn(64, hk, d, generator=g)
    req_to_token = torch.randperm(64, generator=g)[: 2 * 32].view(2, 32)
    fb = types.SimpleNamespace(
        seq_lens=torch.tensor(seq_lens), req_pool_indices=torch.tensor([1, 0]),
        extend_seq_lens_cpu=q_lens, extend_prefix_lens_cpu=[L - n for L, n in zip(seq_lens, q_lens)],
    )
    q = torch.randn(sum(q_lens), hq, d, generator=g)
    outs = []
    for b, (L, n) in enumerate(zip(seq_lens, q_lens)):
        slots = req_to_token[fb.req_pool_indices[b], :L]
        row = sum(q_lens[:b])
        q_pos = torch.arange(L - n, L)
        generated = torch.full((n,), mode == "decode") if prompt_lens is None else q_pos >= prompt_lens[b]
        outs.append(swaa_attention(q[row : row + n], pool_k[slots], pool_v[slots], cfg, layer_id,
                                   q_pos, torch.arange(L), decode=generated, scale=0.3))
    layer = types.SimpleNamespace(tp_q_head_num=hq, head_dim=d, layer_id=layer_id, scaling=0.3)
    return layer, torch.cat(outs).reshape(len(q), -1), q.reshape(len(q), -1), (pool_k, pool_v), req_to_token, fb


def test_right_output_passes_wrong_output_is_flagged(tmp_path):
    cfg = SWAAConfig(sliding_window_size=5, keep_first=2, force_fa_decode=[1])
    path = tmp_path / "check.jsonl"
    check = OpCheck(cfg, str(path), budget=2)  # per mode
    for mode in ("extend", "decode"):
        layer, out, q, kv, r2t, fb = _batch(cfg, 0, mode)
        check.check(mode, layer, out, q, kv, r2t, fb)
        # the full-attention answer is wrong for a sliding layer
        full_out = _batch(SWAAConfig(), 0, mode)[1]
        check.check(mode, layer, full_out, q, kv, r2t, fb)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["mode"] for r in records] == ["extend", "extend", "decode", "decode"]
    assert records[0]["rel_err"] < 1e-6 and records[2]["rel_err"] < 1e-6
    assert records[1]["rel_err"] > 1e-2 and records[3]["rel_err"] > 1e-2
    assert records[0]["tokens"] == 29 and records[2]["batch"] == 2
    assert check.budget == {"extend": 0, "decode": 0} and not check.wanted("extend") and not check.wanted("decode")


def test_generated_rows_of_an_extend_are_checked_with_fa_decode(tmp_path):
    """A retracted request prefilled again: rows at or past its prompt length are generated tokens."""
    cfg = SWAAConfig(sliding_window_size=5, keep_first=2, force_fa_decode=True)
    prompt_lens = [25, 17]  # request 0 (rows at 18..29) straddles its prompt end; request 1 is all prompt
    path = tmp_path / "check.jsonl"
    check = OpCheck(cfg, str(path), budget=3)
    layer, right, q, kv, r2t, fb = _batch(cfg, 0, "extend", prompt_lens)
    prompt_rule = _batch(cfg, 0, "extend")[1]  # every row with the prompt rule
    check.check("extend", layer, right, q, kv, r2t, fb, generated_from=torch.tensor(prompt_lens))
    check.check("extend", layer, prompt_rule, q, kv, r2t, fb, generated_from=torch.tensor(prompt_lens))
    check.check("extend", layer, prompt_rule, q, kv, r2t, fb)  # unmarked: every row is a prompt row
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["generated_rows"] for r in records] == [5, 5, 0]
    assert records[0]["rel_err"] < 1e-6 and records[2]["rel_err"] < 1e-6
    assert records[1]["rel_err"] > 1e-2


def test_off_without_env(monkeypatch):
    monkeypatch.delenv("SWAA_OP_CHECK_FILE", raising=False)
    assert OpCheck.from_env(SWAAConfig(4)) is None
    monkeypatch.setenv("SWAA_OP_CHECK_FILE", "/tmp/x.jsonl")
    monkeypatch.setenv("SWAA_OP_CHECK_MAX", "3")
    assert OpCheck.from_env(SWAAConfig(4)).budget == {"extend": 3, "decode": 3}
    monkeypatch.setenv("SWAA_OP_CHECK_MODES", "extend")
    assert OpCheck.from_env(SWAAConfig(4)).budget == {"extend": 3, "decode": 0}
    monkeypatch.setenv("SWAA_OP_CHECK_MODES", "extend,prefill")
    with pytest.raises(ValueError, match="SWAA_OP_CHECK_MODES: expected a comma list of extend, decode"):
        OpCheck.from_env(SWAAConfig(4))
