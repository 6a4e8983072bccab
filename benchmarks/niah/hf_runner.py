"""The HF reference runner: greedy answers from ``swaa_sglang.hf``, one prefill per group of settings
whose prompt prefill is the same (they differ only in ``force_fa_decode``): its KV cache is copied
and each setting decodes from it (a setting's decode flag changes nothing for prompt rows, SWAA.md).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

from swaa_sglang import hf
from swaa_sglang.config import SWAAConfig

from .benchmark import Answer
from .settings import Setting, prefill_key
from .task import DEFAULT_MAX_NEW_TOKENS, NeedleSample

ATTENTION = {"blockwise": hf.BLOCKWISE_IMPLEMENTATION, "reference": hf.ATTN_IMPLEMENTATION}


def use_config(model: Any, config: SWAAConfig, attention: str = "blockwise") -> None:
    """Attach ``config`` and pick the attention function: "reference" (``swaa_sglang.hf``'s eager-exact
    one, O(N^2) memory) or "blockwise" (the same rule over query blocks, memory bounded by the keys a
    block can see)."""
    if attention not in ATTENTION:
        raise ValueError(f"attention: {attention!r}; allowed: {', '.join(ATTENTION)}")
    hf.attach(model, config)
    hf.set_attention(model, ATTENTION[attention])


class HFRunner:
    """Greedy answers from the HF reference model; one prefill per group of prefill-equal settings."""

    name = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        attention: str = "blockwise",
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.attention = attention
        self.num_layers = model.config.get_text_config().num_hidden_layers
        eos = model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos = {eos} if isinstance(eos, int) else set(eos)

    @classmethod
    def load(
        cls, model_path: str | None, device: str | None, dtype: str | None, max_new_tokens: int, attention: str
    ) -> HFRunner:
        import torch
        from transformers import AutoTokenizer

        from swaa_sglang.models import default_model_path

        path = model_path or default_model_path()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
        model = hf.load_model(path, swaa=SWAAConfig(), dtype=getattr(torch, dtype), device=device)
        runner = cls(model, AutoTokenizer.from_pretrained(path), max_new_tokens, attention)
        runner.model_path, runner.device, runner.dtype = path, str(device), dtype
        return runner

    def describe(self) -> dict[str, Any]:
        return {
            "runner": "hf",
            "model_path": getattr(self, "model_path", None),
            "device": getattr(self, "device", str(self.model.device)),
            "dtype": getattr(self, "dtype", str(self.model.dtype).replace("torch.", "")),
            "attention": self.attention,
            "prefill_sharing": "settings differing only in force_fa_decode decode from one prefill's KV copy",
        }

    def _greedy(self, input_ids: Sequence[int], settings: Sequence[Setting], logits_out: dict | None = None):
        """Prefill once under settings[0], then decode each setting from a copy of the cache."""
        import torch

        model, n = self.model, len(input_ids)
        dev = model.device
        ids = torch.tensor([list(input_ids)], device=dev)
        use_config(model, settings[0].config, self.attention)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(ids, use_cache=True, logits_to_keep=1, swaa_prompt_len=n)
        prefill_s = time.perf_counter() - t0
        cache, first_logits = out.past_key_values, out.logits[0, -1]
        results = {}
        for i, setting in enumerate(settings):
            t0 = time.perf_counter()
            use_config(model, setting.config, self.attention)
            c = cache if i == len(settings) - 1 else copy.deepcopy(cache)
            logits = first_logits
            tokens: list[int] = []
            steps = []
            with torch.no_grad():
                while True:
                    tok = int(logits.argmax())
                    tokens.append(tok)
                    steps.append(logits.float().cpu())
                    if tok in self.eos or len(tokens) >= self.max_new_tokens:
                        break
                    pos = n + len(tokens) - 1
                    o = model(
                        torch.tensor([[tok]], device=dev),
                        past_key_values=c,
                        position_ids=torch.tensor([[pos]], device=dev),
                        use_cache=True,
                        swaa_prompt_len=n,
                    )
                    c, logits = o.past_key_values, o.logits[0, -1]
            text = self.tokenizer.decode([t for t in tokens if t not in self.eos], skip_special_tokens=True)
            results[setting.name] = Answer(text, len(tokens), time.perf_counter() - t0 + prefill_s / len(settings))
            if logits_out is not None:
                logits_out[setting.name] = torch.stack(steps)
        return results

    def answer(self, sample: NeedleSample, settings: Sequence[Setting]) -> dict[str, Answer]:
        groups: dict[str, list[Setting]] = {}
        for s in settings:
            groups.setdefault(prefill_key(s.config, self.num_layers), []).append(s)
        results: dict[str, Answer] = {}
        for group in groups.values():
            results.update(self._greedy(sample.input_ids, group))
        return {s.name: results[s.name] for s in settings}


def verify_blockwise(runner: HFRunner, sample: NeedleSample, settings: Sequence[Setting]) -> dict[str, Any]:
    """Greedy answers and per-step logits, blockwise vs the package's reference attention, on one sample."""
    report = {}
    for s in settings:
        logits = {}
        answers = {}
        for attention in ("reference", "blockwise"):
            runner.attention = attention
            out: dict[str, Any] = {}
            answers[attention] = runner._greedy(sample.input_ids, [s], out)[s.name].text
            logits[attention] = out[s.name]
        a, b = logits["reference"], logits["blockwise"]
        steps = min(len(a), len(b))
        report[s.name] = {
            "same_answer": answers["reference"] == answers["blockwise"],
            "max_abs_logit_diff": float((a[:steps] - b[:steps]).abs().max()),
            "answer": answers["blockwise"],
        }
    runner.attention = "blockwise"
    return report
