"""RULER-style synthetic long-context tasks, generated offline and seeded, with the essays the
project ships (``swaa_sglang.data.essay_texts()``) as haystack.

The tasks follow RULER (Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context
Language Models?", arXiv:2404.06654; github.com/NVIDIA/RULER, ``scripts/data/synthetic/``):
templates, needle sentences, answer prefixes, counts and answer budgets are RULER's. In brackets,
RULER's task name in ``synthetic.yaml``:

* ``niah_single`` [niah_single_2]: one needle, "One of the special magic numbers for <key> is:
  <value>.", in the essays; keys are adjective-noun words, values 7-digit numbers. The question
  asks the key's value.
* ``niah_multikey`` [niah_multikey_1]: four needles with distinct keys, one value each; the
  question asks one key, the three others are distractors.
* ``niah_multivalue`` [niah_multivalue]: four needles with one key and four values; all four are
  expected.
* ``vt`` [vt: variable_tracking, num_chains 1, num_hops 4]: the statements "VAR ABCDE = 12345",
  "VAR FGHIJ = VAR ABCDE", ... (five variables, 5 upper-case letters, a 5-digit value) at sorted
  random places; the question asks every variable assigned the value. As in RULER, one worked
  example (3-letter names, RULER's noise filler) precedes the task.
* ``cwe`` [cwe: common_words_extraction, freq_cw 30, freq_ucw 3, num_cw 10]: a numbered list of
  words, shuffled, where 10 words appear 30 times each and every other word 3 times (6 and 1 below
  4K, as RULER); the question asks the 10 most common. As in RULER, one worked example (40 words,
  10 and 3 times; 20 words, 3 and 1 below 4K) precedes the task.

Needle depths are RULER's grid, ``round(linspace(0, 100, 40))`` percent of the haystack, sampled
without replacement per needle and sorted; a needle goes in at the sentence boundary
``int(sentences * depth)`` of the haystack (RULER: nltk sentences; here a regular expression).

**Length.** RULER's ``max_seq_length`` counts the prompt and the answer budget (its
``tokens_to_generate``: 128 for the needle tasks, 30 for vt, 120 for cwe), so that prompt plus
answer fit a model whose context is the length. A sample of length L has a prompt of
``L - max_new_tokens`` tokens at most and ``tolerance(L)`` fewer at least, counted with the given
tokenizer on the prompt as sent (chat template and answer prefix included).

**Prompt.** One user message; with the tokenizer's chat template when it has one, the answer
prefix appended after the generation prompt (as ``niah/task.py`` does), else the plain task text,
a space and the prefix (RULER's "base" template).

**Deviations from RULER**, where its sources are not at hand offline or did not fit: vt's
haystack is the essays too (RULER fills with a repeated noise sentence; its worked example keeps
it); cwe's words come from the essays' vocabulary and the needle keys from the adjective and noun
lists below (RULER: the ``wonderwords`` lists); vt's answer prefix spells "assigned" (RULER:
"assgined"); prefixes lose RULER's leading and trailing spaces, which only suit raw text.

**Splits.** "test" and "calibration" use different seed namespaces and disjoint vocabularies:
alternate adjectives and nouns for the keys, the lower or upper half of the value ranges, the
first letter of variable names in A-M or N-Z, and the essay words split by a hash. A key, value,
variable or common word of one split never occurs as one in the other.

A sample is a pure function of (tokenizer, essays, task, length, index, seed, split): the essays
come in as a ``niah.task.Corpus`` built with that tokenizer.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from niah.task import Corpus
from swaa_sglang.data import encode_with_offsets, sentence_starts, token_span

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "vt", "cwe")
SPLITS = ("test", "calibration")
DEFAULT_LENGTHS = (4096, 8192, 16384, 32768)
MIN_PROMPT_TOKENS = 256  # below this the fixed text (instructions, worked example) leaves no haystack
# RULER's tokens_to_generate: the answer budget, reserved inside the length
MAX_NEW_TOKENS = {"niah_single": 128, "niah_multikey": 128, "niah_multivalue": 128, "vt": 30, "cwe": 120}
# RULER's DEPTHS: np.round(np.linspace(0, 100, num=40)) percent (no value of 100 i / 39 is a tie)
DEPTHS = tuple(round(100 * i / 39) / 100 for i in range(40))

NIAH_NEEDLE = "One of the special magic numbers for {key} is: {value}."
# RULER's template turned singular (its replace of "Some", "are all", "are", "numbers") when one value is asked
NIAH_TEMPLATE_ONE = (
    "A special magic number is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the number afterwards.\n{context}\n"
    "What is the special magic number for {query} mentioned in the provided text?"
)
NIAH_TEMPLATE_ALL = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards.\n{context}\n"
    "What are all the special magic numbers for {query} mentioned in the provided text?"
)
NIAH_PREFIX_ONE = "The special magic number for {query} mentioned in the provided text is"
NIAH_PREFIX_ALL = "The special magic numbers for {query} mentioned in the provided text are"
NIAH_KEYS = {"niah_single": 1, "niah_multikey": 4, "niah_multivalue": 1}
NIAH_VALUES = {"niah_single": 1, "niah_multikey": 1, "niah_multivalue": 4}

VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_PREFIX = (
    "Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
    "assigned the value {query}, they are:"
)
VT_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
VT_CHAINS, VT_HOPS = 1, 4
VT_EXAMPLE_NOISE_LINES = 8  # RULER builds its example at 500 tokens; 8 noise lines keep it about that short

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the {num_cw} most common words in the above list?"
)
CWE_PREFIX = "Answer: The top {num_cw} words that appear most often in the list are:"
CWE_COMMON = 10

ADJECTIVES = (
    "amber", "ancient", "brave", "bright", "brisk", "calm", "careful", "cheerful", "clever", "cosmic",
    "crimson", "curious", "daring", "deep", "distant", "eager", "early", "electric", "elegant", "emerald",
    "endless", "fancy", "fierce", "fluffy", "fragrant", "frozen", "gentle", "giant", "gleaming", "golden",
    "graceful", "grumpy", "happy", "hidden", "hollow", "humble", "icy", "jolly", "keen", "lively",
    "lonely", "loyal", "lucky", "magnetic", "mellow", "mighty", "misty", "modest", "muddy", "narrow",
    "nimble", "noble", "odd", "olive", "patient", "peaceful", "polite", "proud", "purple", "quick",
    "quiet", "rapid", "rare", "restless", "rough", "royal", "rusty", "sandy", "scarlet", "secret",
    "shiny", "silent", "silky", "sleepy", "slender", "smooth", "snowy", "solar", "sour", "spicy",
    "steady", "stormy", "sturdy", "sunny", "swift", "tall", "tender", "tidy", "tiny", "tranquil",
    "velvet", "vivid", "wandering", "warm", "wild", "windy", "wise", "wooden", "young", "zealous",
)  # fmt: skip
NOUNS = (
    "anchor", "apple", "arrow", "badger", "balloon", "banjo", "basket", "beacon", "beetle", "blanket",
    "bottle", "breeze", "bucket", "butterfly", "cabin", "camel", "candle", "canyon", "carpet", "castle",
    "cactus", "cellar", "chimney", "cloud", "comet", "compass", "cottage", "crystal", "dolphin", "dragon",
    "drum", "eagle", "ember", "falcon", "feather", "fern", "fiddle", "forest", "fossil", "fountain",
    "garden", "glacier", "goblet", "harbor", "helmet", "heron", "island", "jacket", "kettle", "kite",
    "ladder", "lantern", "lemon", "lizard", "magnet", "maple", "meadow", "mirror", "mountain", "nutmeg",
    "oasis", "orchard", "otter", "paddle", "parrot", "pebble", "pepper", "piano", "pigeon", "pillow",
    "pirate", "planet", "pocket", "puzzle", "rabbit", "raven", "ribbon", "river", "rocket", "saddle",
    "sailor", "shadow", "shell", "spider", "spoon", "statue", "teapot", "thimble", "tiger", "tornado",
    "trumpet", "tulip", "turtle", "valley", "violin", "walrus", "whistle", "window", "wizard", "zebra",
)  # fmt: skip
# Disjoint per split, so no answer of one split is ever an answer of the other.
NIAH_VALUE_RANGE = {"test": (1_000_000, 5_499_999), "calibration": (5_500_000, 9_999_999)}
VT_VALUE_RANGE = {"test": (10_000, 54_999), "calibration": (55_000, 99_999)}
VT_FIRST_LETTERS = {"test": "ABCDEFGHIJKLM", "calibration": "NOPQRSTUVWXYZ"}
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def tolerance(length: int) -> int:
    """How many tokens a prompt may fall short of its budget (``length - max_new_tokens``)."""
    return max(32, length // 100)


@dataclass(frozen=True)
class Needle:
    """One inserted statement: a needle sentence (niah) or a variable assignment (vt)."""

    text: str
    key: str  # niah: the key; vt: the variable assigned
    value: str  # niah: the number; vt: the right-hand side ("12345" or "VAR ABCDE")
    is_answer: bool  # whether the question asks for it (the queried key's needles, the queried chain)
    depth: float  # requested: fraction of the haystack's sentences before it (RULER's grid)
    span: tuple[int, int]  # [start, end) token positions in input_ids

    def describe(self, prompt_tokens: int) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "is_answer": self.is_answer,
            "depth": self.depth,
            "span": list(self.span),
            "token_depth": round(self.span[0] / prompt_tokens, 4),
            "tokens_after": prompt_tokens - self.span[1],
        }


@dataclass(frozen=True)
class RulerSample:
    """One prompt, its expected answers, and where its needles landed."""

    task: str
    split: str
    length: int  # target: prompt + answer budget (RULER's max_seq_length)
    index: int
    seed: int
    max_new_tokens: int  # the answer budget (RULER's tokens_to_generate)
    query: str  # the key (niah) or value (vt) asked about; "" for cwe
    expected: tuple[str, ...]  # every string a correct answer holds
    needles: tuple[Needle, ...]  # in prompt order; none for cwe (its common words are everywhere)
    messages: tuple[dict[str, str], ...]  # chat messages (for /v1/chat/completions; no answer prefix)
    answer_prefix: str
    prompt: str  # chat template applied, generation prompt and answer prefix included
    input_ids: tuple[int, ...]

    @property
    def sample_id(self) -> str:
        return f"{self.task}-{self.split}-L{self.length}-s{self.seed}-{self.index}"

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def prompt_budget(self) -> int:
        return self.length - self.max_new_tokens

    def answer_spans(self) -> list[tuple[int, int]]:
        return [n.span for n in self.needles if n.is_answer]

    def placement(self, window: int) -> str:
        """Where the answer needles sit for a sliding window of ``window`` keys (see :func:`placement`)."""
        return placement(self.answer_spans(), self.prompt_tokens, window)

    def describe(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "task": self.task,
            "split": self.split,
            "length": self.length,
            "index": self.index,
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "prompt_tokens": self.prompt_tokens,
            "query": self.query,
            "expected": list(self.expected),
            "needles": [n.describe(self.prompt_tokens) for n in self.needles],
            "prompt_sha256": hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()[:16],
        }


def placement(spans: Sequence[tuple[int, int]], prompt_tokens: int, window: int) -> str:
    """"inside": the last prompt token sees every answer needle whole through the window (it sees key j
    iff ``last - j < window``); "outside": no token of any; "mixed": otherwise; "spread": no needles
    (cwe). Sinks are not counted: a needle among the first sink tokens still counts as outside."""
    if not spans:
        return "spread"
    last = prompt_tokens - 1
    if all(last - start < window for start, _ in spans):
        return "inside"
    if all(last - (end - 1) >= window for _, end in spans):
        return "outside"
    return "mixed"


# -- vocabularies, one per split ----------------------------------------------------------------
def _split_index(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}; got {split!r}")
    return SPLITS.index(split)


def key_vocabulary(split: str) -> tuple[str, ...]:
    """Adjective-noun keys (RULER's "words" keys): alternate adjectives and nouns per split."""
    i = _split_index(split)
    return tuple(f"{a}-{n}" for a in ADJECTIVES[i::2] for n in NOUNS[i::2])


_CWE_VOCABULARY: dict[tuple[str, str], tuple[str, ...]] = {}


def cwe_vocabulary(corpus: Corpus, split: str) -> tuple[str, ...]:
    """Lower-case words of 4-10 letters that occur at least twice in the essays (no typos or names),
    minus the cwe template's own words, split in two by a hash of the word: about 1,700 per split,
    enough for 32K tokens (about 1,200 rare words with the Qwen2.5 tokenizer), not for 64K."""
    i = _split_index(split)
    key = (corpus.sha256, split)
    if key not in _CWE_VOCABULARY:
        counts = Counter(re.findall(r"(?<![A-Za-z'-])[a-z]{4,10}(?![A-Za-z'-])", corpus.text))
        template_words = set(re.findall(r"[a-z]+", (CWE_TEMPLATE + CWE_PREFIX).lower()))
        _CWE_VOCABULARY[key] = tuple(
            sorted(
                w
                for w, c in counts.items()
                if c >= 2 and w not in template_words and hashlib.sha256(w.encode()).digest()[0] % 2 == i
            )
        )
    return _CWE_VOCABULARY[key]


def _distinct_numbers(rng: random.Random, lo: int, hi: int, n: int, exclude: Sequence[int] = ()) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        v = rng.randint(lo, hi)
        if v not in out and v not in exclude:
            out.append(v)
    return out


def _var_names(rng: random.Random, split: str, letters: int, n: int) -> list[str]:
    """``n`` distinct upper-case names (RULER: random letters); the first letter marks the split."""
    first = VT_FIRST_LETTERS[split]
    out: list[str] = []
    while len(out) < n:
        name = rng.choice(first) + "".join(rng.choices(_UPPER, k=letters - 1))
        if name not in out:
            out.append(name)
    return out


# -- prompt assembly and length fitting ----------------------------------------------------------

def _render(tokenizer: Any, user_text: str, answer_prefix: str) -> tuple[tuple[dict[str, str], ...], str]:
    """(messages, prompt): the chat template with the prefix after the generation prompt, or plain text."""
    messages = ({"role": "user", "content": user_text},)
    if getattr(tokenizer, "chat_template", None):
        templated = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return messages, templated + answer_prefix
    return messages, f"{user_text} {answer_prefix}"



@dataclass(frozen=True)
class _Fitted:
    messages: tuple[dict[str, str], ...]
    prompt: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]


def _fit(measure: Callable[[int], _Fitted], guess: int, slope: float, lo: int, hi: int, budget: int, tol: int,
         what: str) -> _Fitted:
    """The prompt from ``measure(n)`` for some n in [lo, hi] whose token count lies in [budget - tol, budget].

    Token counts grow with n about ``slope`` tokens per unit: steps of that slope until the target
    is bracketed, then interpolation inside the bracket (a handful of tokenizations in all)."""
    aim = budget - tol // 2
    below: tuple[int, int] | None = None  # (n, tokens) too short
    above: tuple[int, int] | None = None  # (n, tokens) too long
    n = min(max(guess, lo), hi)
    for _ in range(40):
        fitted = measure(n)
        tokens = len(fitted.input_ids)
        if budget - tol <= tokens <= budget:
            return fitted
        if tokens > budget:
            above = (n, tokens)
        else:
            below = (n, tokens)
        if below and above:
            if above[0] - below[0] <= 1:
                break
            (n0, t0), (n1, t1) = below, above
            n = n0 + round((aim - t0) * (n1 - n0) / max(t1 - t0, 1))
            n = min(max(n, n0 + 1), n1 - 1)
        else:
            step = round((aim - tokens) / slope) or (1 if tokens < aim else -1)
            n_next = min(max(n + step, lo), hi)
            if n_next == n:  # at a bound already: the corpus or vocabulary cannot give more (or less)
                break
            n = n_next
    raise ValueError(f"length: cannot fit {what} into {budget - tol}..{budget} prompt tokens")


def _insert_at_depths(haystack: str, inserts: Sequence[tuple[float, str]]) -> str:
    """``haystack`` with each text at the sentence boundary ``int(sentences * depth)`` (RULER's rule);
    texts at one boundary keep their order."""
    bounds = [0] + [c for c in sentence_starts(haystack) if 0 < c < len(haystack)] + [len(haystack)]
    sentences = len(bounds) - 1
    placed = sorted((bounds[min(int(sentences * d), sentences)], i, t) for i, (d, t) in enumerate(inserts))
    pieces, prev = [], 0
    for c, _, text in placed:
        pieces.append(haystack[prev:c])
        pieces.append(text + " " if c < len(haystack) else " " + text)
        prev = c
    pieces.append(haystack[prev:])
    return "".join(pieces)


def _first_sentence_token(corpus: Corpus, token: int) -> int:
    """The first corpus token at or after ``token`` that starts a sentence."""
    char = corpus.offsets[token][0]
    starts = sentence_starts(corpus.text[char : char + 20_000])
    if not starts:
        return token
    return bisect.bisect_left([a for a, _ in corpus.offsets], char + starts[0])


def _fit_essay(tokenizer: Any, corpus: Corpus, start_frac: float, inserts: Sequence[tuple[float, str]],
               user_text: Callable[[str], str], answer_prefix: str, budget: int, tol: int, what: str) -> _Fitted:
    """An essay haystack of the right size, with ``inserts`` (depth, text) at their depths.

    The haystack starts at a sentence start fixed by ``start_frac`` and grows at its end, which is
    cut at a word boundary: the token count then moves by a few tokens per step, never a sentence."""
    first = _first_sentence_token(corpus, int(start_frac * max(len(corpus) - budget, 1)))

    def measure(n_hay: int) -> _Fitted:
        haystack = corpus.slice_text(first, n_hay)
        haystack = haystack[: haystack.rfind(" ")].rstrip() if " " in haystack else haystack
        context = _insert_at_depths(haystack, inserts)
        messages, prompt = _render(tokenizer, user_text(context), answer_prefix)
        return _Fitted(messages, prompt, *encode_with_offsets(tokenizer, prompt))

    _, bare = _render(tokenizer, user_text(" ".join(t for _, t in inserts)), answer_prefix)
    fixed = len(encode_with_offsets(tokenizer, bare)[0])
    return _fit(measure, budget - tol // 2 - fixed, 1.0, 16, len(corpus) - first, budget, tol, what)


def _needles(fitted: _Fitted, inserts: Sequence[tuple[float, str, str, str, bool]]) -> tuple[Needle, ...]:
    """The inserted statements with their token spans, in prompt order; each must occur once."""
    out = []
    for depth, text, key, value, is_answer in inserts:
        if fitted.prompt.count(text) != 1:
            raise ValueError(f"needle {text!r} occurs {fitted.prompt.count(text)} times in the prompt")
        lo = fitted.prompt.index(text)
        out.append(Needle(text, key, value, is_answer, depth, token_span(fitted.offsets, lo, lo + len(text))))
    return tuple(sorted(out, key=lambda n: n.span))


# -- the tasks ----------------------------------------------------------------------------------
def _niah(tokenizer: Any, corpus: Corpus, rng: random.Random, task: str, split: str, budget: int, tol: int):
    num_keys, num_values = NIAH_KEYS[task], NIAH_VALUES[task]
    keys = rng.sample(key_vocabulary(split), num_keys)
    values = [str(v) for v in _distinct_numbers(rng, *NIAH_VALUE_RANGE[split], num_keys * num_values)]
    pairs = [(keys[k], values[k * num_values + v]) for k in range(num_keys) for v in range(num_values)]
    rng.shuffle(pairs)  # RULER shuffles the needles, then inserts them at sorted depths
    depths = sorted(rng.sample(DEPTHS, len(pairs)))
    query = rng.choice(keys)
    start_frac = rng.random()
    one = num_values == 1  # RULER: singular wording iff one value is asked (num_needle_q * num_needle_v == 1)
    template, prefix = (NIAH_TEMPLATE_ONE, NIAH_PREFIX_ONE) if one else (NIAH_TEMPLATE_ALL, NIAH_PREFIX_ALL)
    inserts = [(d, NIAH_NEEDLE.format(key=k, value=v), k, v, k == query) for d, (k, v) in zip(depths, pairs)]
    fitted = _fit_essay(tokenizer, corpus, start_frac, [(d, t) for d, t, *_ in inserts],
                        lambda context: template.format(context=context, query=query),
                        prefix.format(query=query), budget, tol, task)
    expected = tuple(values[keys.index(query) * num_values : (keys.index(query) + 1) * num_values])
    return query, expected, _needles(fitted, inserts), fitted, prefix.format(query=query)


def _vt_example(rng: random.Random, split: str, exclude_values: Sequence[int]) -> str:
    """RULER's worked example: one chain of 3-letter names in its noise filler, with the answer."""
    names = _var_names(rng, split, 3, VT_HOPS + 1)
    [value] = _distinct_numbers(rng, *VT_VALUE_RANGE[split], 1, exclude=exclude_values)
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(VT_HOPS)]
    lines = [VT_NOISE] * VT_EXAMPLE_NOISE_LINES
    for offset, pos in enumerate(sorted(rng.sample(range(len(lines)), len(chain)))):
        lines.insert(pos + offset, chain[offset])
    task = VT_TEMPLATE.format(context=" ".join(lines), query=value)
    return f"{task} {VT_PREFIX.format(num_v=len(names), query=value)} {' '.join(names)}"


def _vt(tokenizer: Any, corpus: Corpus, rng: random.Random, split: str, budget: int, tol: int):
    names = _var_names(rng, split, 5, VT_CHAINS * (VT_HOPS + 1))
    values = _distinct_numbers(rng, *VT_VALUE_RANGE[split], VT_CHAINS)
    inserts = []
    for c in range(VT_CHAINS):
        chain = names[c * (VT_HOPS + 1) : (c + 1) * (VT_HOPS + 1)]
        rhs = [str(values[c])] + [f"VAR {v}" for v in chain[:-1]]
        # sorted depths keep each assignment after the one it reads
        for d, var, right in zip(sorted(rng.sample(DEPTHS, len(chain))), chain, rhs):
            inserts.append((d, f"VAR {var} = {right}", var, right, c == 0))
    example = _vt_example(rng, split, values)
    start_frac = rng.random()
    query = str(values[0])  # RULER asks the first chain's value
    prefix = VT_PREFIX.format(num_v=VT_HOPS + 1, query=query)
    fitted = _fit_essay(tokenizer, corpus, start_frac, [(d, t) for d, t, *_ in inserts],
                        lambda context: f"{example}\n\n{VT_TEMPLATE.format(context=context, query=query)}",
                        prefix, budget, tol, "vt")
    return query, tuple(names[: VT_HOPS + 1]), _needles(fitted, inserts), fitted, prefix


def _numbered(words: Sequence[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def _cwe(tokenizer: Any, corpus: Corpus, rng: random.Random, split: str, length: int, budget: int, tol: int):
    # RULER: below 4K, 6 and 1 repeats (example: 20 words, 3 and 1); else 30 and 3 (example: 40 words, 10 and 3)
    freq_common, freq_rare = (6, 1) if length < 4096 else (30, 3)
    example_words, example_common, example_rare = (20, 3, 1) if length < 4096 else (40, 10, 3)
    vocab = cwe_vocabulary(corpus, split)
    order = rng.sample(vocab, len(vocab))
    example, pool = order[:example_words], order[example_words:]  # disjoint: the example answers nothing
    example_list = example[:CWE_COMMON] * example_common + example[CWE_COMMON:] * example_rare
    rng.shuffle(example_list)
    example_text = (
        f"{CWE_TEMPLATE.format(context=_numbered(example_list), num_cw=CWE_COMMON)} "
        f"{CWE_PREFIX.format(num_cw=CWE_COMMON)} {_numbered(example[:CWE_COMMON])}"
    )
    common = pool[:CWE_COMMON]
    shuffle_seed = rng.getrandbits(64)
    prefix = CWE_PREFIX.format(num_cw=CWE_COMMON)

    def measure(n_rare: int) -> _Fitted:
        words = common * freq_common + pool[CWE_COMMON : CWE_COMMON + n_rare] * freq_rare
        random.Random(f"{shuffle_seed}:{n_rare}").shuffle(words)
        task = CWE_TEMPLATE.format(context=_numbered(words), num_cw=CWE_COMMON)
        messages, prompt = _render(tokenizer, f"{example_text}\n{task}", prefix)
        return _Fitted(messages, prompt, *encode_with_offsets(tokenizer, prompt))

    per_entry = len(encode_with_offsets(tokenizer, " 1234. " + " ".join(pool[:20]))[0]) / 20 + 3  # "1234." and its space
    fitted = _fit(measure, int((budget - len(measure(0).input_ids)) / (freq_rare * per_entry)), freq_rare * per_entry,
                  0, len(pool) - CWE_COMMON, budget, tol, f"cwe ({len(vocab)} essay words in the {split} split)")
    return "", tuple(common), (), fitted, prefix


def check_length(task: str, length: int) -> None:
    """ValueError unless ``length`` leaves the task room for a prompt (instructions, example, some haystack)."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}; got {task!r}")
    budget = length - MAX_NEW_TOKENS[task]
    if budget - tolerance(length) < MIN_PROMPT_TOKENS:
        raise ValueError(f"length {length} leaves {budget} prompt tokens for {task}; "
                         f"{MIN_PROMPT_TOKENS + tolerance(length)} at least")


def make_sample(tokenizer: Any, corpus: Corpus, task: str, length: int, index: int, seed: int = 0,
                split: str = "test") -> RulerSample:
    """One sample (deterministic). ValueError when the task cannot fill ``length``."""
    check_length(task, length)
    _split_index(split)
    max_new = MAX_NEW_TOKENS[task]
    budget, tol = length - max_new, tolerance(length)
    # the split is part of the seed namespace: the two splits never share a random stream
    rng = random.Random(f"ruler:{split}:{task}:{length}:{seed}:{index}")
    if task.startswith("niah"):
        query, expected, needles, fitted, prefix = _niah(tokenizer, corpus, rng, task, split, budget, tol)
    elif task == "vt":
        query, expected, needles, fitted, prefix = _vt(tokenizer, corpus, rng, split, budget, tol)
    else:
        query, expected, needles, fitted, prefix = _cwe(tokenizer, corpus, rng, split, length, budget, tol)
    return RulerSample(task, split, length, index, seed, max_new, query, expected, needles, fitted.messages, prefix,
                       fitted.prompt, tuple(fitted.input_ids))
