"""Window eviction in a real sglang.Engine (GPU host; not run on the CPU suite).

Qwen3-0.6B shapes with dummy weights (``benchmarks/models/qwen3-0.6b``), and SmolLM2-135M real
weights for long generations and a multi-turn conversation; W = 64, k = 4, every layer windowed
(the last one is kept whole in the full pool, docs/design/eviction.md), eviction on (the default)
vs off, with page sizes 1, 16 and 64; and a mixed layout (odd layers full) with eviction on:

* the same requests give token-identical greedy outputs wherever the computation has the same
  shapes in both runs (FlashInfer and the GEMMs are then bitwise deterministic). With the radix
  cache, eviction legitimately shortens some prefix hits (a hit needs its window's KV; SGLang
  frees the middle of a finished request), which changes extend shapes and hence bf16 rounding:
  identity is asserted for every request up to the first one whose cached-token count differs
  between the runs, and the counts are reported;
* the in-server op check (``SWAA_OP_CHECK_FILE``) recomputes attention calls in float64 from the
  buffer each layer reads (the SWA pool through the translated slots on windowed layers): every
  call must agree, also for prefills over an evicted, reused prefix;
* after the requests finish, SGLang's idle self-check (``SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE``,
  on by default) verifies that both pools are whole again (available + cached == size; a leak
  raises in the scheduler), ``flush_cache`` succeeds, and the engine still serves.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest
import torch

from swaa_sglang import SWAAConfig

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

MODEL = str(Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "qwen3-0.6b")
W, K = 64, 4
PAGES = [1, 16, 64]  # sinks and windows are kept at page granularity: K = 4 takes a whole page


@pytest.fixture(autouse=True)
def _gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


def _requests(seed: int = 0):
    """Round 1: prompts of 100-1500 tokens cut from 3 shared documents (prefix hits), 80-300 new tokens.
    Round 2: prefixes of round-1 prompts plus new tails (reuse after round 1 finished and was evicted)."""
    rng = random.Random(seed)
    docs = [[rng.randrange(100, 30000) for _ in range(1500)] for _ in range(3)]
    round1 = []
    for i in range(9):
        n = rng.randint(100, 1500)
        round1.append((docs[i % 3][:n], rng.randint(80, 300)))
    round2 = []
    for prompt, _ in round1[:6]:
        cut = rng.randint(len(prompt) // 2, len(prompt))
        round2.append((prompt[:cut] + [rng.randrange(100, 30000) for _ in range(rng.randint(1, 60))], rng.randint(80, 150)))
    return round1, round2


def _engine(evict: bool | None, op_check: Path | None = None, model: str = MODEL, full_layers=(), **kw):
    """An Engine with W = 64, k = 4; ``evict`` None leaves window eviction to its default (on here)."""
    import sglang

    config = SWAAConfig(sliding_window_size=W, keep_first=K, evict_window=evict, non_sliding_layers=list(full_layers))
    if op_check is not None:
        os.environ["SWAA_OP_CHECK_FILE"] = str(op_check)
        os.environ["SWAA_OP_CHECK_MAX"] = "600"
    kwargs = dict(model_path=model, skip_tokenizer_init=True, attention_backend="swaa",
                  json_model_override_args=json.dumps({"swaa": config.to_dict()}), mem_fraction_static=0.3,
                  chunked_prefill_size=256, log_level="error")
    if model == MODEL:
        kwargs["load_format"] = "dummy"
    kwargs.update(kw)
    try:
        return sglang.Engine(**kwargs)
    finally:
        os.environ.pop("SWAA_OP_CHECK_FILE", None)


def _ids_and_hit(out: dict) -> tuple[list[int], int]:
    return out["output_ids"], out["meta_info"].get("cached_tokens", 0)


def _gen(engine, reqs, batched: bool):
    params = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for _, n in reqs]
    prompts = [p for p, _ in reqs]
    if batched:
        outs = engine.generate(input_ids=prompts, sampling_params=params)
    else:  # one at a time: each request's shapes depend only on its own cache hit
        outs = [engine.generate(input_ids=p, sampling_params=s) for p, s in zip(prompts, params)]
    return [_ids_and_hit(o) for o in outs]


def _pools_whole(engine) -> None:
    """Idle long enough for SGLang's idle invariant check (raises in the scheduler on a leaked slot
    of either pool), empty the cache, and prove the scheduler is alive."""
    time.sleep(3)
    assert engine.flush_cache().success
    out = engine.generate(input_ids=[1, 2, 3, 4, 5], sampling_params={"max_new_tokens": 2})
    assert len(out["output_ids"]) == 2


def _run(evict: bool | None, batched: bool, op_check: Path | None = None, requests=None, **kw):
    round1, round2 = requests or _requests()
    engine = _engine(evict, op_check, **kw)  # kw: full_layers, and Engine arguments
    try:
        out1 = _gen(engine, round1, batched)
        out2 = _gen(engine, round2, batched) if round2 else []
        _pools_whole(engine)
        info = engine.get_server_info()
    finally:
        engine.shutdown()
    return out1 + out2, info


def _identical_until_shapes_differ(on, off) -> int:
    """Assert token identity for every request up to the first whose cached-token count differs."""
    n = 0
    for i, ((ids_on, hit_on), (ids_off, hit_off)) in enumerate(zip(on, off)):
        if hit_on != hit_off:
            break
        assert ids_on == ids_off, f"request {i}: eviction changed the greedy output (same cache hit {hit_on})"
        n += 1
    return n


@pytest.mark.parametrize("page", PAGES)
def test_chunk_cache_eviction_is_token_identical_with_cuda_graphs(page):
    """No radix cache: SGLang's SWA chunk cache frees the window's past during chunked prefill and
    decode; shapes are identical in both runs, so every output must be identical. CUDA graphs on.
    Eviction by default (no evict_window given) against eviction off."""
    on, info = _run(None, batched=True, disable_radix_cache=True, page_size=page)
    off, _ = _run(False, batched=True, disable_radix_cache=True, page_size=page)
    assert info["radix_cache_backend"] == "swaa" and info["page_size"] == page  # eviction's cache: on by default
    assert all(len(ids) == n for (ids, _), (_, n) in zip(on, _requests()[0] + _requests()[1]))
    assert [ids for ids, _ in on] == [ids for ids, _ in off]


@pytest.mark.parametrize("page", PAGES)
def test_radix_cache_eviction_reuses_prefixes_exactly(tmp_path, page):
    """Radix cache with prefix reuse, eager (no CUDA graphs), op check on in the eviction run."""
    log = tmp_path / "opcheck.jsonl"
    on, info = _run(True, batched=False, op_check=log, disable_cuda_graph=True, page_size=page)
    off, _ = _run(False, batched=False, disable_cuda_graph=True, page_size=page)
    assert info["radix_cache_backend"] == "swaa" and info["page_size"] == page
    same = _identical_until_shapes_differ(on, off)
    hits_on = [h for _, h in on]
    hits_off = [h for _, h in off]
    print(f"\npage {page}: identical for the first {same}/{len(on)} requests; cached tokens on={hits_on} "
          f"off={hits_off}")
    assert same >= 1
    assert any(h > K for h in hits_on), "no prefix reuse beyond the sinks with eviction on"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["mode"] for r in records} == {"extend", "decode"}
    assert all(r["finite"] for r in records)
    bad = [r for r in records if r["rel_err"] > 1e-2]
    assert not bad, bad[:5]
    # long sequences were checked: windowed reads through evicted pools
    assert max(r["max_seq_len"] for r in records) > 4 * W


@pytest.mark.parametrize("page", PAGES)
def test_radix_cache_eviction_batched_with_cuda_graphs(tmp_path, page):
    """Batched, CUDA graphs on (decode replays re-plan the translated index lists), op check on
    (eager calls only); identity where the batch hit the cache the same way."""
    log = tmp_path / "opcheck.jsonl"
    on, _ = _run(True, batched=True, op_check=log, page_size=page)
    off, _ = _run(False, batched=True, page_size=page)
    round1 = len(_requests()[0])
    if [h for _, h in on[:round1]] == [h for _, h in off[:round1]]:
        assert [ids for ids, _ in on[:round1]] == [ids for ids, _ in off[:round1]]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and all(r["finite"] for r in records)
    bad = [r for r in records if r["rel_err"] > 1e-2]
    assert not bad, bad[:5]



@pytest.mark.parametrize("page", [1, 16])
def test_mixed_layout_eviction_reuses_prefixes_exactly(tmp_path, page):
    """Full layers (the odd ones, SGLang's stock path) beside windowed layers with eviction on: radix
    hits and chunked prefill, CUDA graphs on, op check on every layer's eager calls."""
    log = tmp_path / "opcheck.jsonl"
    odd = range(1, 28, 2)
    on, info = _run(True, batched=False, op_check=log, page_size=page, full_layers=odd)
    off, _ = _run(False, batched=False, page_size=page, full_layers=odd)
    assert info["radix_cache_backend"] == "swaa" and info["page_size"] == page
    same = _identical_until_shapes_differ(on, off)
    print(f"\nmixed, page {page}: identical for the first {same}/{len(on)} requests; cached tokens "
          f"on={[h for _, h in on]} off={[h for _, h in off]}")
    assert same >= 1 and any(h > K for _, h in on), "no prefix reuse beyond the sinks with eviction on"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["mode"] for r in records} == {"extend", "decode"} and all(r["finite"] for r in records)
    full = [r for r in records if r["layer"] % 2 == 1]
    assert full, "the op check saw no full layer"
    bad = [r for r in records if r["rel_err"] > 1e-2]
    assert not bad, bad[:5]


def _build_chat(engine, tok, text: str, questions: list[str], params: dict):
    """A multi-turn chat: turn i's prompt is the chat so far plus question i. Returns each turn's
    (output ids, cached tokens) and the prompts, for a second engine to replay exactly."""
    history: list[dict] = []
    turns, prompts = [], []
    for i, q in enumerate(questions):
        history.append({"role": "user", "content": (text + "\n\n" if i == 0 else "") + q})
        ids = tok.apply_chat_template(history, add_generation_prompt=True, tokenize=True, return_dict=False)
        out = engine.generate(input_ids=ids, sampling_params=params)
        prompts.append(ids)
        turns.append(_ids_and_hit(out))
        history.append({"role": "assistant", "content": tok.decode(out["output_ids"], skip_special_tokens=True)})
    return turns, prompts


def test_real_weights_eviction_is_token_identical(smollm2_gpu_path, smollm2_tokenizer):
    """SmolLM2-135M real weights (30 layers, head dim 64), W = 64, k = 4, every layer windowed:
    (1) chunk cache, batched, CUDA graphs: long generations (600 tokens, about ten windows past
    W) are identical with eviction on and off; (2) radix cache, eager: a 4-turn conversation on
    real text whose turns hit the cache is identical wherever the cache hit was the same."""
    from swaa_sglang.data import essay_texts

    text = " ".join(essay_texts()[0].split()[:900])  # first: on an offline host without essays, fail before any engine
    rng = random.Random(1)
    docs = [[rng.randrange(100, 49000) for _ in range(1200)] for _ in range(2)]
    long_gen = [(docs[i % 2][: 300 + 200 * i], 600) for i in range(4)]
    on, _ = _run(True, batched=True, requests=(long_gen, []), model=smollm2_gpu_path, disable_radix_cache=True)
    off, _ = _run(False, batched=True, requests=(long_gen, []), model=smollm2_gpu_path, disable_radix_cache=True)
    assert all(len(ids) == 600 for ids, _ in on)
    assert [ids for ids, _ in on] == [ids for ids, _ in off]

    questions = ["Summarise the text above.", "What is the main argument?", "Name one example it gives.",
                 "Write a title for it."]
    params = {"temperature": 0, "max_new_tokens": 300}
    results = {}
    engine = _engine(False, model=smollm2_gpu_path, disable_cuda_graph=True)
    try:  # eviction off builds the chat ...
        results[False], prompts = _build_chat(engine, smollm2_tokenizer, text, questions, params)
        _pools_whole(engine)
    finally:
        engine.shutdown()
    engine = _engine(True, model=smollm2_gpu_path, disable_cuda_graph=True)
    try:  # ... eviction on replays its prompts
        results[True] = [_ids_and_hit(engine.generate(input_ids=p, sampling_params=params)) for p in prompts]
        _pools_whole(engine)
    finally:
        engine.shutdown()
    same = _identical_until_shapes_differ(results[True], results[False])
    print(f"\nconversation: identical for the first {same}/{len(questions)} turns; cached tokens "
          f"on={[h for _, h in results[True]]} off={[h for _, h in results[False]]}; "
          f"prompt lengths={[len(q) for q in prompts]}")
    assert same >= 2
    assert any(h > K for _, h in results[True][1:]), "later turns did not reuse the conversation's prefix"
