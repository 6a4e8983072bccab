"""Evaluate a SWAA setting on your model with the HF transformers reference, before serving it.

Loads the model once (float32, CPU or GPU, no custom kernels), then for full attention
and for the chosen SWAA setting prints the perplexity of a long text (Paul Graham
essays) and one greedy answer to a question about that text.

    python launch/examples/hf_reference_eval.py   # embedded SmolLM2; window 256 + 10 sinks + FA decode
    python launch/examples/hf_reference_eval.py --swaa-preset balanced --tokens 6000 \\
        --model-path Qwen/Qwen3-4B-Instruct-2507 --device cuda   # a paper setting on your model

The perplexity is teacher-forced (every token is a prompt token), so it shows the
effect of the window, the sinks and the full layers; full-attention decode only
changes the generated answer. A window at least as long as the text masks nothing:
give --tokens well above W.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from swaa_sglang import SWAAConfig
from swaa_sglang.data import essay_texts
from swaa_sglang.cli import add_swaa_args, config_from_args
from swaa_sglang.hf import attach, load_model
from swaa_sglang.models import default_model_path

QUESTION = "In one sentence, what is the text above about?"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model-path", help="Llama/Qwen2/Qwen3/Qwen3-MoE checkpoint (default: the embedded SmolLM2-135M)")
    add_swaa_args(p, eviction=False)  # --swaa-preset, --swaa-config, --swaa-window, ... as for the server
    p.add_argument("--tokens", type=int, default=1024, help="length of the text in tokens (default 1024)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="length of the greedy answer (default 24)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    return p.parse_args()


def swaa_config(args: argparse.Namespace) -> SWAAConfig:
    config = config_from_args(args)
    if config is None:
        # Default: the 'sink10-2k' shape scaled down to the short default text.
        return SWAAConfig(sliding_window_size=256, keep_first=10, force_fa_decode=True)
    return config


def prompt_ids(tokenizer, text_ids: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """The chat prompt "<text>\n\n<question>" as token ids, and where the text's tokens sit in it."""
    marker = "\x00TEXT\x00"
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"{marker}\n\n{QUESTION}"}],
                                               add_generation_prompt=True, tokenize=False)
    else:  # a base model
        prompt = f"{marker}\n\nQuestion: {QUESTION}\nAnswer:"
    before, after = prompt.split(marker)
    encode = lambda s: tokenizer(s, add_special_tokens=False, return_tensors="pt").input_ids
    ids = torch.cat([encode(before), text_ids, encode(after)], dim=1)
    start = encode(before).shape[1]
    return ids, slice(start, start + text_ids.shape[1])


@torch.no_grad()
def evaluate(model, ids: torch.Tensor, text: slice, max_new_tokens: int, eos: set[int]) -> tuple[float, list[int]]:
    """One forward over the prompt: perplexity of the text, then greedy decoding from the KV cache."""
    out = model(ids, use_cache=True)  # prompt rows: windowed on the sliding layers
    logits = out.logits[0, text.start : text.stop - 1]  # each text token predicted from what precedes it
    ppl = math.exp(F.cross_entropy(logits, ids[0, text.start + 1 : text.stop]).item())
    answer: list[int] = []
    for _ in range(max_new_tokens):  # generated rows: full attention where force_fa_decode says so
        token = out.logits[0, -1].argmax()
        if token.item() in eos:
            break
        answer.append(token.item())
        out = model(token.view(1, 1), past_key_values=out.past_key_values, use_cache=True)
    return ppl, answer


def main() -> None:
    args = parse_args()
    try:
        config = swaa_config(args)
    except ValueError as e:  # a bad --swaa-* value: the field's message, not a traceback
        sys.exit(f"error: {e}")
    path = args.model_path or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_model(path, dtype=getattr(torch, args.dtype), device=args.device)

    text = "\n\n".join(essay_texts())[: args.tokens * 8]  # more characters than tokens needed
    text_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[:, : args.tokens]
    ids, text_span = prompt_ids(tokenizer, text_ids)
    ids = ids.to(model.device)
    if config.sliding_window_size is not None and config.sliding_window_size >= text_ids.shape[1]:
        print(f"note: window {config.sliding_window_size} >= {text_ids.shape[1]} tokens: this setting masks nothing")

    eos = model.generation_config.eos_token_id
    eos = set(eos) if isinstance(eos, list) else {eos if eos is not None else tokenizer.eos_token_id}
    rows = []
    for name, cfg in (("full attention", SWAAConfig()), ("SWAA", config)):
        attach(model, cfg)  # same weights, another attention setting
        t0 = time.perf_counter()
        ppl, answer = evaluate(model, ids, text_span, args.max_new_tokens, eos)
        answer = " ".join(tokenizer.decode(answer, skip_special_tokens=True).split())
        rows.append((name, ppl, time.perf_counter() - t0, answer))

    print(f"model: {path}")
    print(f"SWAA:  {config.to_json()}")
    print(f"text:  {text_ids.shape[1]} tokens of essays (prompt {ids.shape[1]} tokens), then {QUESTION!r}\n")
    print("| setting | perplexity | vs full | seconds | greedy answer |")
    print("|---|---|---|---|---|")
    for name, ppl, secs, answer in rows:
        print(f"| {name} | {ppl:.3f} | {ppl / rows[0][1] - 1:+.1%} | {secs:.1f} | {answer} |")


if __name__ == "__main__":
    main()
