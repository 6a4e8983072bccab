"""The needle-in-a-haystack task: prompts of about ``context_length`` tokens of essays with one needle
sentence, "The special magic number for <city> is <7-digit number>.", and a question asking for it.

The needle sits INSIDE the sliding window (every query that produces an answer token sees the
whole needle through the window alone) or OUTSIDE it (no needle token is within the window of the
last prompt token or of any generated token; depths 10%..70% of the prompt). Inside and outside
samples of the same index share the haystack, city and number: the comparison is paired. Samples
are a pure function of (tokenizer, essays, context length, window, index, seed, max new tokens).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swaa_sglang.data import encode_with_offsets, joined_essays, sentence_starts, token_span

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
        self.text = joined_essays(texts)
        enc = tokenizer(self.text, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
        self.offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
        self.sha256 = hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.offsets)

    def slice_text(self, start: int, n_tokens: int) -> str:
        """The text of ``n_tokens`` corpus tokens from token ``start``."""
        return self.text[self.offsets[start][0] : self.offsets[start + n_tokens - 1][1]]





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
    fixed = len(encode_with_offsets(tokenizer, bare)[0]) + len(encode_with_offsets(tokenizer, needle + " ")[0])
    n_hay = context_length - fixed
    if n_hay < 64:
        raise ValueError(f"context_length: {context_length} leaves only {n_hay} haystack tokens")
    head_chars = bare.index("\n\n\n\n") + 2  # where the (empty) haystack sits in the bare prompt
    head_tokens = len(encode_with_offsets(tokenizer, bare[:head_chars])[0])

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
            last_ok = context_length - tail - (fixed - len(encode_with_offsets(tokenizer, bare)[0])) - 8
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
        starts = [c for c in sentence_starts(haystack) if 0 < c < len(haystack)]
        starts.sort(key=lambda c: abs(c - target_char))
        candidates = [c for c in starts[:40] if abs(c - target_char) < 1200] or [
            haystack.rfind(" ", 0, target_char) + 1
        ]
        for c in candidates:
            hay = haystack[:c] + needle + " " + haystack[c:]
            messages, prefix, prompt = _build_prompt(tokenizer, city, hay, use_answer_prefix)
            if prompt.count(needle) != 1:
                continue
            ids, offsets = encode_with_offsets(tokenizer, prompt)
            lo = prompt.index(needle)
            span = token_span(offsets, lo, lo + len(needle))
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
