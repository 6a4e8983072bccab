"""Model families, page sizes, chunked prefill, mixed batches and TP in a real Engine (GPU host).

Dummy weights (only ``config.json``) of Qwen3, Qwen2, Llama and Qwen3-MoE shapes are served
with the swaa backend while the in-server op check (``attention_backends.op_check``)
recomputes attention calls from the KV pool in float64 and logs the relative error.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from swaa_sglang import SWAAConfig

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
CONFIG = SWAAConfig(sliding_window_size=64, keep_first=4, force_fa_decode=[2], non_sliding_layers=[1])


def _serve_and_check(tmp_path, model: str, config: SWAAConfig = CONFIG, n_prompts=6, **engine_kwargs) -> list[dict]:
    import sglang

    log = tmp_path / f"opcheck-{model}.jsonl"
    os.environ["SWAA_OP_CHECK_FILE"] = str(log)
    os.environ["SWAA_OP_CHECK_MAX"] = "400"
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 30000) for _ in range(rng.randint(90, 700))] for _ in range(n_prompts)]
    kwargs = dict(model_path=str(MODELS / model), load_format="dummy", skip_tokenizer_init=True,
                  attention_backend="swaa", json_model_override_args=json.dumps({"swaa": config.to_dict()}),
                  mem_fraction_static=0.5, disable_cuda_graph=True, chunked_prefill_size=256, log_level="error")
    kwargs.update(engine_kwargs)
    engine = sglang.Engine(**kwargs)
    try:
        outs = engine.generate(input_ids=prompts, sampling_params={"temperature": 0, "max_new_tokens": 80,
                                                                   "ignore_eos": True})
        # a second round shares prefixes with the first: radix-cache hits, prefill over cached KV
        engine.generate(input_ids=[p[:80] + p[:40] for p in prompts], sampling_params={"max_new_tokens": 4})
    finally:
        engine.shutdown()
        os.environ.pop("SWAA_OP_CHECK_FILE")
    assert all(len(o["output_ids"]) == 80 for o in outs)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    worst = max(r["rel_err"] for r in records)
    print(f"\n{model} {engine_kwargs}: {len(records)} checked calls, worst rel err {worst:.2e}")
    return records


def _assert_exact(records: list[dict]) -> None:
    assert records, "the op check recorded nothing"
    assert {r["mode"] for r in records} == {"extend", "decode"}
    assert all(r["finite"] for r in records)
    bad = [r for r in records if r["rel_err"] > 1e-2]
    assert not bad, bad[:5]
    # chunked prefill over a cached prefix was exercised (prompts longer than one 256-token chunk)
    assert any(r["mode"] == "extend" and r["max_seq_len"] > 256 for r in records)


@pytest.fixture(autouse=True)
def _gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


@pytest.mark.parametrize("model", ["qwen3-0.6b", "qwen2-0.5b", "llama-mini", "qwen3-moe-mini"])
def test_model_families(tmp_path, model):
    _assert_exact(_serve_and_check(tmp_path, model))


@pytest.mark.parametrize("page_size", [16, 64])
def test_page_sizes(tmp_path, page_size):
    _assert_exact(_serve_and_check(tmp_path, "qwen3-0.6b", page_size=page_size))


@pytest.mark.parametrize("fa_decode", [False, True])
def test_mixed_chunk_batches(tmp_path, fa_decode):
    """Generated rows folded into prefill batches follow decode semantics (FA decode where configured)."""
    cfg = SWAAConfig(sliding_window_size=64, keep_first=4, force_fa_decode=fa_decode)
    records = _serve_and_check(tmp_path, "qwen3-0.6b", cfg, n_prompts=12, enable_mixed_chunk=True)
    _assert_exact(records)
    assert any(r.get("generated_rows", 0) > 0 for r in records), "no mixed batch was checked"


def test_tensor_parallel_2(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (run on a 2-GPU host)")
    _assert_exact(_serve_and_check(tmp_path, "qwen3-0.6b", tp_size=2))
