"""The benchmark loop: every (context length, window, sample, setting) through a runner, one record each."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .scoring import score
from .settings import Setting
from .task import DEFAULT_OUTSIDE_DEPTHS, POSITIONS, Corpus, make_samples

logger = logging.getLogger("quality_niah")


@dataclass
class Answer:
    """One runner's greedy answer to one sample under one setting."""

    text: str
    tokens: int
    seconds: float  # this setting's share: its decode, plus the shared prefill split evenly


def machine_info() -> dict[str, Any]:
    """Where the run happened: CPU, thread count, library versions, the GPU if any (the host name hashed)."""
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
