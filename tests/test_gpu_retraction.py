"""Retracted requests keep decode semantics for their generated tokens (GPU host; SmolLM2 real weights).

Under memory pressure SGLang retracts running requests and later prefills them again over prompt +
output (``Req.reset_for_retract`` keeps ``output_ids``). On a layer with FA decode the tokens the
model generated must then be recomputed with the decode rule (they see everything), not with the
prompt's window. W = 64, k = 4, FA decode on every layer; 32 greedy generations of 512 tokens
(``ignore_eos``; with the radix cache on, SGLang admits new requests against the running ones'
estimated growth, which a low ``schedule_conservativeness`` makes optimistic):

* run R: a small KV pool (``max_total_tokens``) and a low ``schedule_conservativeness`` force
  retractions, counted from SGLang's own per-request ``meta_info["num_retractions"]``. SGLang frees
  a retracted request's KV without caching its output, so the request's next prefill recomputes its
  generated tokens (over its cached prompt, or with it);
* runs A and B: a large pool, no retraction; B with fewer running requests, so its batches differ
  from A's as R's do (SGLang's batch variance);
* the in-server op check (``SWAA_OP_CHECK_FILE``) recomputes every extend call of run R in float64
  from the KV pool: the prefills of retracted requests, whose rows straddle the prompt end, must
  agree with the rule (generated rows see everything);
* teacher-forced against the HF reference (generated tokens as decode rows), the retracted
  requests' outputs agree as well as the same requests' unretracted outputs do; the greedy prefix
  agreement of R with A, and of B with A, is reported.

Results (counts and agreement) are printed and written to $SWAA_RESULTS_DIR/retraction.json if set.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from swaa_sglang import SWAAConfig

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

CONFIG = SWAAConfig(sliding_window_size=64, keep_first=4, force_fa_decode=True)
N_REQUESTS = 32
NEW_TOKENS = 512
SMALL_POOL = 6144  # tokens: about a quarter of what the 32 requests reach together


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@pytest.fixture(scope="module")
def prompts(smollm2_gpu_path) -> list[list[int]]:
    """Chat prompts of about 150 to 450 tokens cut from the bundled essays."""
    from transformers import AutoTokenizer

    from swaa_sglang.data import essay_texts

    tok = AutoTokenizer.from_pretrained(smollm2_gpu_path)
    words = " ".join(essay_texts()).split()
    out = []
    for i in range(N_REQUESTS):
        n_words = 100 + 8 * i
        chunk = " ".join(words[i * 400 : i * 400 + n_words])
        msgs = [{"role": "user", "content": f"{chunk}\n\nContinue this text in the same style."}]
        out.append(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))
    return out


def _generate(model_path: str, prompts: list[list[int]], op_check: Path | None = None, **server) -> list[dict]:
    """Greedy, NEW_TOKENS each."""
    import sglang

    if op_check is not None:
        os.environ["SWAA_OP_CHECK_FILE"] = str(op_check)
        os.environ["SWAA_OP_CHECK_MAX"] = "3000"
        os.environ["SWAA_OP_CHECK_MODES"] = "extend"  # decode runs in CUDA graphs, checked by the outputs
    _log(f"engine {server}: starting")
    try:
        engine = sglang.Engine(
            model_path=model_path, attention_backend="swaa", skip_tokenizer_init=True,
            json_model_override_args=json.dumps({"swaa": CONFIG.to_dict()}), mem_fraction_static=0.3,
            log_level="error", **server,
        )
    finally:
        os.environ.pop("SWAA_OP_CHECK_FILE", None)
        os.environ.pop("SWAA_OP_CHECK_MAX", None)
        os.environ.pop("SWAA_OP_CHECK_MODES", None)
    try:
        params = {"temperature": 0.0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}
        outs = engine.generate(input_ids=prompts, sampling_params=params)
    finally:
        engine.shutdown()
    _log(f"engine {server}: done")
    return outs


def _retractions(outs: list[dict]) -> list[int]:
    """SGLang's own count per request (``Req.retraction_count``, reported in ``meta_info``)."""
    counts = [o["meta_info"].get("num_retractions") for o in outs]
    assert all(c is not None for c in counts), "meta_info carries no num_retractions: SGLang's output changed"
    return counts


def _prefix_agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """Mean fraction of the common greedy prefix, and how many sequences match fully."""
    fracs = []
    for x, y in zip(a, b):
        n = max(len(x), len(y))
        common = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
        fracs.append(common / n if n else 1.0)
    return {"mean_prefix_agreement": sum(fracs) / max(len(fracs), 1), "exact": sum(x == y for x, y in zip(a, b)),
            "n": len(a)}


def _teacher_forced(model, prompts: list[list[int]], outputs: list[list[int]], decode_rows: bool) -> dict:
    """Feed the engine's tokens to the HF reference: at how many positions is its argmax the same token?

    ``decode_rows``: the generated tokens are decode rows (FA decode applies, the rule the engine must
    follow); False: every token keeps the prompt rule (the semantics a wrong recompute would give).
    """
    from swaa_sglang.hf import prompt_length

    same = total = 0
    with torch.no_grad():
        for ids, out in zip(prompts, outputs):
            x = torch.tensor([ids + out], device="cuda")
            with prompt_length(model, len(ids) if decode_rows else len(ids) + len(out)):
                logits = model(x).logits[0, len(ids) - 1 : -1]
            same += int((logits.argmax(-1).cpu() == torch.tensor(out)).sum())
            total += len(out)
    return {"same_argmax": same, "positions": total, "rate": same / max(total, 1)}


def _results(data: dict) -> None:
    _log(f"retraction: {json.dumps(data)[:3000]}")
    out = os.environ.get("SWAA_RESULTS_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "retraction.json").write_text(json.dumps(data, indent=1))


def test_retracted_requests_keep_decode_semantics(smollm2_gpu_path, prompts, tmp_path):
    from swaa_sglang.hf import load_model

    op_log = tmp_path / "opcheck.jsonl"
    small = _generate(smollm2_gpu_path, prompts, op_check=op_log, max_total_tokens=SMALL_POOL,
                      schedule_conservativeness=0.3)
    large = _generate(smollm2_gpu_path, prompts)
    large_b = _generate(smollm2_gpu_path, prompts, max_running_requests=N_REQUESTS // 3)
    r_counts, a_counts, b_counts = _retractions(small), _retractions(large), _retractions(large_b)
    out_r, out_a, out_b = ([o["output_ids"] for o in outs] for outs in (small, large, large_b))
    assert all(len(o) == NEW_TOKENS for o in out_r + out_a + out_b)
    retracted = [i for i, c in enumerate(r_counts) if c > 0]

    records = [json.loads(line) for line in op_log.read_text().splitlines()] if op_log.exists() else []
    extend = [r for r in records if r["mode"] == "extend"]
    recomputed = [r for r in extend if r["generated_rows"] > 1]  # a retracted request prefilled again

    def sub(values: list) -> list:
        return [values[i] for i in retracted]

    model = load_model(smollm2_gpu_path, swaa=CONFIG, dtype=torch.bfloat16, device="cuda")
    forced_r = _teacher_forced(model, sub(prompts), sub(out_r), decode_rows=True)
    forced_a = _teacher_forced(model, sub(prompts), sub(out_a), decode_rows=True)
    forced_a_prompt_rule = _teacher_forced(model, sub(prompts), sub(out_a), decode_rows=False)
    del model
    torch.cuda.empty_cache()

    report = {
        "config": CONFIG.to_dict(), "requests": N_REQUESTS, "new_tokens": NEW_TOKENS, "small_pool": SMALL_POOL,
        "retractions": {"small_pool_total": sum(r_counts), "requests_retracted": len(retracted),
                        "large_pool_total": sum(a_counts), "large_pool_b_total": sum(b_counts)},
        "op_check": {"extend_calls": len(extend), "extend_calls_with_generated_rows": len(recomputed),
                     "max_generated_rows": max((r["generated_rows"] for r in extend), default=0),
                     "max_rel_err": max((r["rel_err"] for r in extend), default=None)},
        "retracted_requests": {
            "teacher_forced_retracted_run": forced_r, "teacher_forced_unretracted_run": forced_a,
            "teacher_forced_unretracted_run_prompt_rule": forced_a_prompt_rule,
            "prefix_agreement_retracted_vs_unretracted": _prefix_agreement(sub(out_r), sub(out_a)),
            "prefix_agreement_two_unretracted_runs": _prefix_agreement(sub(out_b), sub(out_a)),
        },
        "all_requests": {"prefix_agreement_retracted_vs_unretracted": _prefix_agreement(out_r, out_a),
                         "prefix_agreement_two_unretracted_runs": _prefix_agreement(out_b, out_a)},
    }
    _results(report)

    # retraction happened in R only, by SGLang's own count
    assert retracted, f"no request was retracted with max_total_tokens={SMALL_POOL}: {report['retractions']}"
    assert sum(a_counts) == 0 and sum(b_counts) == 0, report["retractions"]
    # the retracted requests were prefilled again over their generated tokens, and every extend call
    # (those included) matches the float64 rule, generated rows with FA decode
    assert recomputed, f"no extend call held generated rows: {report['op_check']}"
    assert all(r["finite"] and r["rel_err"] < 1e-2 for r in extend), [r for r in extend if not r["rel_err"] < 1e-2][:5]
    # the teacher-forced measure tells the two semantics apart on these requests (not vacuous) ...
    assert forced_a_prompt_rule["rate"] < forced_a["rate"] - 0.05, report["retracted_requests"]
    # ... and by it the retracted outputs follow the decode rule as well as unretracted outputs do
    assert forced_r["rate"] >= forced_a["rate"] - 0.02, report["retracted_requests"]
