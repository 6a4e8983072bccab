"""Synthetic multi-key retrieval prompts for :mod:`swaa_sglang.calibrate` (torch-free, no SGLang).

Each prompt is a chat prompt of about ``length`` tokens: an instruction, a haystack of the Paul
Graham essays the project ships (:mod:`swaa_sglang.data`) with ``n_keys`` needle sentences
"The locker code of the <adjective> <object> is <animal>-<4 digits>." hidden at sentence starts, and
a question about one of them (the target), followed by the assistant turn and an answer prefix, so
the gold answer is the value alone (`` heron-3917``: several tokens, each one a retrieval).

Disjoint from the test tasks by construction: the phrasing ("locker code"), the key vocabulary
(materials and colours x household objects) and the value vocabulary (animal-digits) are this
module's own, and every random draw comes from ``sha256(f"{namespace}:{seed}:{index}")``, with
:data:`NAMESPACE` reserved for calibration. A test set built with another namespace (or none of this
module) cannot share a random stream with it.

The target needle sits where the window cannot reach it from the answer when the prompt allows
(at least ``window + TAIL_MARGIN`` tokens before the prompt's end): calibration is about what
sliding layers lose, which is long-range retrieval. The other needles are distractors anywhere.
A prompt is a pure function of (tokenizer, essays, length, window, n_keys, namespace, seed, index).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .data import encode_with_offsets, joined_essays, sentence_starts, token_span

NAMESPACE = "swaa-calibrate/v1"

INSTRUCTION = (
    "The text below hides several locker codes, each one for a different object. Remember all of them: "
    "afterwards you will be asked for one."
)
NEEDLE = "The locker code of the {key} is {value}."
QUESTION = "What is the locker code of the {key}?"
ANSWER_PREFIX = "The locker code of the {key} is"

KEY_ADJECTIVES = (
    "amber", "bronze", "cobalt", "copper", "coral", "crimson", "emerald", "granite", "indigo", "ivory",
    "jade", "maple", "obsidian", "pearl", "saffron", "scarlet", "silver", "slate", "velvet", "walnut",
)
KEY_OBJECTS = (
    "accordion", "anchor", "barometer", "bicycle", "canoe", "chessboard", "compass", "harp", "hourglass",
    "kettle", "lantern", "lighthouse", "satchel", "sextant", "teapot", "telescope", "typewriter", "umbrella",
    "violin", "windmill",
)
VALUE_WORDS = (
    "badger", "bison", "civet", "dingo", "egret", "ferret", "gecko", "gibbon", "heron", "ibis", "jackal",
    "lynx", "marten", "otter", "puffin", "tapir", "walrus", "wombat", "yak", "zebu",
)

# Tokens kept between the target needle's end and the window of the last prompt token (chat-template
# and tokenization slack), so an "outside" target really is outside.
TAIL_MARGIN = 64
# Sentence starts: after ". ", "? ", "! " (a closing quote allowed) before a capital, or a paragraph break.


@dataclass(frozen=True)
class CalibrationPrompt:
    """One prompt and its gold answer, as token ids, with where the needles landed."""

    index: int
    prompt_ids: tuple[int, ...]  # chat template, question and answer prefix included
    answer_ids: tuple[int, ...]  # the gold value, tokenized on its own (" heron-3917")
    target_key: str
    target_value: str
    needles: tuple[tuple[str, str], ...]  # (key, value) of every needle, the target included
    target_span: tuple[int, int]  # [start, end) token positions of the target needle in prompt_ids
    target_outside_window: bool  # the last prompt token cannot see any target token through the window

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def input_ids(self) -> tuple[int, ...]:
        """Prompt then gold answer: what a teacher-forced forward reads."""
        return self.prompt_ids + self.answer_ids

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "prompt_tokens": self.prompt_len,
            "answer_tokens": len(self.answer_ids),
            "target": f"{self.target_key} = {self.target_value}",
            "target_span": list(self.target_span),
            "target_outside_window": self.target_outside_window,
            "keys": len(self.needles),
        }


def prompt_rng(namespace: str, seed: int, index: int) -> random.Random:
    """The random stream of one prompt: a hash of (namespace, seed, index), independent of Python's hash seed."""
    digest = hashlib.sha256(f"{namespace}:{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class EssayCorpus:
    """The essays as one text (paragraphs kept, whitespace normalised), tokenized once with character offsets."""

    def __init__(self, tokenizer: Any, texts: Sequence[str] | None = None):
        self.text = joined_essays(texts)
        enc = tokenizer(self.text, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
        self.offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
        if not self.offsets:
            raise ValueError("essays: the calibration corpus is empty")

    def __len__(self) -> int:
        return len(self.offsets)

    def slice_text(self, start: int, n_tokens: int) -> str:
        """About ``n_tokens`` tokens of text from token ``start`` (wrapping around the end of the corpus)."""
        pieces, left = [], n_tokens
        while left > 0:
            take = min(left, len(self.offsets) - start)
            pieces.append(self.text[self.offsets[start][0] : self.offsets[start + take - 1][1]])
            left -= take
            start = 0
        return "\n\n".join(pieces)


def _format_prompt(tokenizer: Any, user: str, answer_prefix: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + answer_prefix
    return f"{user}\n\n{answer_prefix}"  # a base model: plain text




def _draw_needles(rng: random.Random, n_keys: int) -> list[tuple[str, str]]:
    keys = rng.sample([f"{a} {o}" for a in KEY_ADJECTIVES for o in KEY_OBJECTS], n_keys)
    words = rng.sample(VALUE_WORDS, n_keys)  # distinct words: no two needles share a first answer token
    return [(key, f"{word}-{rng.randrange(1000, 10000)}") for key, word in zip(keys, words)]


def _insert_needles(haystack: str, needles: Sequence[tuple[float, str]]) -> tuple[str, list[int]]:
    """Insert each ``(fraction of the haystack, sentence)`` at the first sentence start at or after that
    fraction; returns the text and each needle's character start (in the order given)."""
    starts = sentence_starts(haystack)
    placed = []
    for order, (fraction, sentence) in enumerate(needles):
        at = int(fraction * len(haystack))
        pos = next((s for s in starts if s >= at), len(haystack))
        placed.append((pos, order, sentence))
    text, cursor, shift, char_starts = [], 0, 0, [0] * len(needles)
    for pos, order, sentence in sorted(placed):
        text.append(haystack[cursor:pos])
        char_starts[order] = pos + shift
        insert = sentence + " "
        text.append(insert)
        shift += len(insert)
        cursor = pos
    text.append(haystack[cursor:])
    return "".join(text), char_starts


def build_prompt(
    tokenizer: Any,
    corpus: EssayCorpus,
    length: int,
    window: int,
    index: int,
    seed: int = 0,
    n_keys: int = 4,
    namespace: str = NAMESPACE,
) -> CalibrationPrompt:
    """Prompt ``index``: prompt plus gold answer at most ``length`` tokens (and within a few tokens of it)."""
    if n_keys < 1:
        raise ValueError(f"n_keys: need at least one needle; got {n_keys}")
    rng = prompt_rng(namespace, seed, index)
    needles = _draw_needles(rng, n_keys)
    target = rng.randrange(n_keys)
    key, value = needles[target]
    corpus_start = rng.randrange(len(corpus))
    answer_ids = tuple(tokenizer(" " + value, add_special_tokens=False)["input_ids"])
    question = QUESTION.format(key=key)
    answer_prefix = ANSWER_PREFIX.format(key=key)

    # Tokens around the haystack (instruction, needles, question, template): measured on an empty haystack.
    needle_text = " ".join(NEEDLE.format(key=k, value=v) for k, v in needles)
    overhead = len(encode_with_offsets(tokenizer, _format_prompt(tokenizer, f"{INSTRUCTION}\n\n{needle_text}\n\n{question}",
                                                      answer_prefix))[0])
    budget = length - len(answer_ids)
    hay_tokens = budget - overhead
    if hay_tokens < 16:
        raise ValueError(f"length: {length} tokens leave no room for the essay text (the prompt's frame alone "
                         f"takes {overhead + len(answer_ids)}); allowed: at least {overhead + len(answer_ids) + 16}")
    # Where the target may go: as a fraction of the haystack, early enough that the window of the last prompt
    # token ends after it (when the prompt is long enough for that), at least 5% in.
    reachable = (hay_tokens - window - TAIL_MARGIN) / hay_tokens
    target_fraction = rng.uniform(0.05, reachable) if reachable > 0.1 else rng.uniform(0.05, 0.95)
    fractions = [rng.uniform(0.02, 0.98) for _ in needles]
    fractions[target] = target_fraction

    for _ in range(6):  # tokenization at the seams shifts the count by a few tokens: converge on the budget
        haystack, char_starts = _insert_needles(
            corpus.slice_text(corpus_start, hay_tokens),
            [(f, NEEDLE.format(key=k, value=v)) for f, (k, v) in zip(fractions, needles)],
        )
        user = f"{INSTRUCTION}\n\n{haystack}\n\n{question}"
        text = _format_prompt(tokenizer, user, answer_prefix)
        ids, offsets = encode_with_offsets(tokenizer, text)
        excess = len(ids) - budget
        if -4 <= excess <= 0:
            break
        hay_tokens -= excess
    if len(ids) > budget:  # never over the requested length
        hay_tokens -= len(ids) - budget + 8
        haystack, char_starts = _insert_needles(
            corpus.slice_text(corpus_start, hay_tokens),
            [(f, NEEDLE.format(key=k, value=v)) for f, (k, v) in zip(fractions, needles)],
        )
        text = _format_prompt(tokenizer, f"{INSTRUCTION}\n\n{haystack}\n\n{question}", answer_prefix)
        ids, offsets = encode_with_offsets(tokenizer, text)

    haystack_at = text.index(haystack)
    target_text = NEEDLE.format(key=key, value=value)
    lo = haystack_at + char_starts[target]
    span = token_span(offsets, lo, lo + len(target_text))
    outside = (len(ids) - 1) - (span[1] - 1) >= window
    return CalibrationPrompt(
        index=index,
        prompt_ids=tuple(ids),
        answer_ids=answer_ids,
        target_key=key,
        target_value=value,
        needles=tuple(needles),
        target_span=span,
        target_outside_window=outside,
    )


def build_prompts(
    tokenizer: Any,
    n_prompts: int,
    length: int,
    window: int,
    seed: int = 0,
    n_keys: int = 4,
    namespace: str = NAMESPACE,
    corpus: EssayCorpus | None = None,
) -> list[CalibrationPrompt]:
    """``n_prompts`` prompts (indices 0..n-1) of at most ``length`` tokens each, answer included."""
    corpus = corpus if corpus is not None else EssayCorpus(tokenizer)
    return [build_prompt(tokenizer, corpus, length, window, i, seed, n_keys, namespace) for i in range(n_prompts)]
