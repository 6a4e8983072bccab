"""How close greedy decoding runs to a tie: top-1 minus top-2 logit at every generated token.

The GPU determinism test found that a SWAA config parts from its own solo run sooner than stock
SGLang does once a batch or a cache hit changes the bf16 rounding. A greedy path can only part
where the two best logits are closer than that rounding; this measures how often they are, with
the HF reference on CPU (float32), on the determinism test's own prompts
(``swaa_sglang.data.summarise_prompts``), for full attention and one SWAA config.

    python benchmarks/greedy_margins.py --window 64 --keep-first 4 --out margins.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

THRESHOLDS = (0.05, 0.1, 0.25, 0.5)


def margins_of(model, prompt: list[int], max_new: int) -> list[float]:
    """Greedy generation of ``max_new`` tokens; the top-1 minus top-2 logit before each one."""
    import torch

    ids = torch.tensor([prompt], device=model.device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, min_new_tokens=max_new,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
    top2 = [step[0].float().topk(2).values for step in out.logits]
    return [float(t[0] - t[1]) for t in top2]


def summary(margins: list[float]) -> dict:
    """Median, low quantiles and the share of steps under each threshold."""
    ordered = sorted(margins)
    return {
        "steps": len(ordered),
        "median": statistics.median(ordered),
        "p10": ordered[int(0.1 * (len(ordered) - 1))],
        "under": {str(t): sum(m < t for m in ordered) / len(ordered) for t in THRESHOLDS},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--window", type=int, default=64, help="the SWAA config's sliding_window_size (the "
                   "default is the determinism test's)")
    p.add_argument("--keep-first", type=int, default=4, help="its keep_first (the default is the determinism test's)")
    p.add_argument("--targets", type=int, default=24, help="prompts (the determinism test's first N)")
    p.add_argument("--max-new", type=int, default=64, help="greedy tokens per prompt")
    p.add_argument("--out", help="JSON output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from swaa_sglang import SWAAConfig
    from swaa_sglang.data import summarise_prompts
    from swaa_sglang.hf import load_model
    from swaa_sglang.models import default_model_path

    path = default_model_path()
    prompts, _ = summarise_prompts(AutoTokenizer.from_pretrained(path), n_targets=a.targets, n_busy=0)
    configs = {"full": SWAAConfig(), f"W={a.window}, k={a.keep_first}": SWAAConfig(a.window, a.keep_first)}
    t0 = time.time()
    result = {"benchmark": "greedy_margins", "model": path, "dtype": "float32", "device": "cpu",
              "torch": torch.__version__, "command": " ".join(sys.argv), "max_new_tokens": a.max_new,
              "prompt_tokens": [len(x) for x in prompts], "configs": {}}
    for name, config in configs.items():
        model = load_model(path, swaa=config, device="cpu")
        per_prompt = [margins_of(model, x, a.max_new)
                      for x in tqdm(prompts, desc=name, disable=a.no_progress)]
        flat = [m for ms in per_prompt for m in ms]
        result["configs"][name] = {"config": config.to_dict(), **summary(flat), "margins": per_prompt}
    result["elapsed_s"] = round(time.time() - t0, 1)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"\ntop-1 minus top-2 logit over {a.targets} prompts x {a.max_new} greedy tokens (HF reference, float32, CPU)")
    print(f"{'config':16} {'median':>7} {'p10':>6} " + " ".join(f"{'<' + str(t):>6}" for t in THRESHOLDS))
    for name, r in result["configs"].items():
        print(f"{name:16} {r['median']:7.3f} {r['p10']:6.3f} " + " ".join(f"{r['under'][str(t)]:6.1%}" for t in THRESHOLDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
