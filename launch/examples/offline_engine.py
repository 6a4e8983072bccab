"""Offline batch inference with sglang.Engine and a SWAA config built in code (needs a GPU).

    python launch/examples/offline_engine.py                       # embedded SmolLM2-135M-Instruct
    python launch/examples/offline_engine.py --model-path Qwen/Qwen3-4B-Instruct-2507 --window 2048

sglang.Engine loads the swaa plugin itself (its entry point); the config reaches every
worker as the "swaa" key of json_model_override_args.
"""

from __future__ import annotations

import argparse
import json
import sys

import sglang
import torch
from transformers import AutoTokenizer

from swaa_sglang import SWAAConfig
from swaa_sglang.models import default_model_path

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three uses of a paperclip.",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", help="model directory or hub id (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--window", type=int, default=2048, help="sliding_window_size (default %(default)s)")
    p.add_argument("--keep-first", type=int, default=100, help="keep_first: sink tokens (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args()
    if not torch.cuda.is_available():  # sglang.Engine would fail later with a long traceback
        sys.exit("error: this example needs an NVIDIA GPU (CUDA); none found. For CPU use, run the HF reference: "
                 "python launch/examples/hf_reference_eval.py")
    model_path = args.model_path or default_model_path()

    # The 'balanced' preset, written out: window + sinks, full-attention decode, odd layers full.
    swaa = SWAAConfig(
        sliding_window_size=args.window,
        keep_first=args.keep_first,
        force_fa_decode=True,
        non_sliding_layers="odd",
    )
    llm = sglang.Engine(
        model_path=model_path,
        attention_backend="swaa",
        json_model_override_args=json.dumps({"swaa": swaa.to_dict()}),
        mem_fraction_static=0.5,
        log_level="error",
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
            for q in QUESTIONS
        ]
        outputs = llm.generate(prompts, {"temperature": 0, "max_new_tokens": args.max_new_tokens})
        print(f"SWAA: {swaa.to_json()}")
        for question, out in zip(QUESTIONS, outputs):
            print(f"[{out['meta_info']['completion_tokens']} tokens] {question}\n    {out['text'].strip()}")
    finally:
        llm.shutdown()


if __name__ == "__main__":  # sglang.Engine spawns processes that re-import this module
    main()
