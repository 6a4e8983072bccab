"""``python -m swaa_sglang.calibrate``: the selection logic, the blockwise out-of-window mass, the recipe,
the calibration prompts, the CLI's errors, and an end-to-end run on the embedded SmolLM2 (slow)."""

from __future__ import annotations

import ast
import json
import random
import zlib
from pathlib import Path

import pytest
import torch
import yaml

from swaa_sglang import calibrate as cal
from swaa_sglang.calibration_prompts import (
    ANSWER_PREFIX, INSTRUCTION, KEY_ADJECTIVES, KEY_OBJECTS, NEEDLE, QUESTION, VALUE_WORDS, EssayCorpus, build_prompts,
)
from swaa_sglang.config import SWAAConfig
from swaa_sglang.reference import visibility_mask

ROOT = Path(__file__).resolve().parents[1]


# -- layer ranking and scores ----------------------------------------------------------------------
def test_rank_layers_orders_by_score_and_breaks_ties_by_the_lower_layer():
    assert cal.rank_layers([0.1, 0.5, 0.5, 0.2, 0.5]) == [1, 2, 4, 3, 0]
    assert cal.rank_layers([0.0, 0.0, 0.0]) == [0, 1, 2]


def test_combine_scores_weights_answer_and_background_and_skips_missing_background():
    answer = [[0.8, 0.0], [0.4, 0.2]]  # two prompts, two layers
    background = [[0.4, 0.4], None]  # the second prompt had no query that could see past the window
    scores = cal.combine_scores(answer, background, answer_weight=0.75)
    assert scores[0].answer_mass == pytest.approx(0.6) and scores[0].background_mass == pytest.approx(0.4)
    assert scores[0].score == pytest.approx(0.75 * 0.6 + 0.25 * 0.4)
    assert scores[1].score == pytest.approx(0.75 * 0.1 + 0.25 * 0.4)
    only_answer = cal.combine_scores(answer, [None, None])
    assert [s.score for s in only_answer] == pytest.approx([0.6, 0.1])
    assert only_answer[0].background_mass is None


def test_sample_queries_are_the_answer_rows_and_distinct_positions_past_window_and_sinks():
    answer, background = cal.sample_queries(prompt_len=500, answer_len=4, window=100, keep_first=8,
                                            n_background=50, rng=random.Random(0))
    assert answer == [499, 500, 501, 502]  # the last prompt token predicts the first answer token
    assert len(background) == 50 == len(set(background)) and background == sorted(background)
    assert min(background) >= 108 and max(background) < 499
    # a prompt no longer than window + sinks has no query with hidden keys: no background sample
    assert cal.sample_queries(100, 3, 100, 8, 50, random.Random(0))[1] == []


# -- the choice --------------------------------------------------------------------------------------
def C(name, layers, off, on):  # noqa: N802 - a short constructor for the tables below
    return cal.Candidate(name, tuple(layers), off, on)


def test_choose_takes_the_lowest_objective_with_fa_decode_charged_the_threshold():
    a = C("a", [1], off=1.00, on=0.95)  # FA decode gains 0.05 > 0.02: objective 0.97, FA on
    b = C("b", [2], off=0.98, on=0.97)  # gains 0.01: objective min(0.98, 0.99) = 0.98, FA off
    choice = cal.choose([b, a], threshold=0.02)
    assert choice.candidate is a and choice.fa_decode is True and choice.nll == 0.95
    # a larger threshold makes FA decode too expensive: b's windowed decode wins
    choice = cal.choose([a, b], threshold=0.04)
    assert choice.candidate is b and choice.fa_decode is False and choice.nll == 0.98


def test_fa_decode_pays_only_strictly_above_the_threshold():
    c = C("c", [0], off=1.0, on=0.75)  # a gain of exactly 0.25 (exact in binary)
    assert c.fa_decode_gain() == 0.25
    assert cal.choose([c], threshold=0.25).fa_decode is False  # equal: does not pay
    assert cal.choose([c], threshold=0.125).fa_decode is True
    assert cal.choose([C("worse", [0], off=1.0, on=1.5)], threshold=0.0).fa_decode is False


def test_ties_go_to_the_earlier_candidate():
    first, second = C("odd", [1, 3], 2.0, 2.0), C("mass-top", [3, 5], 2.0, 2.0)
    assert cal.choose([first, second], 0.02).candidate is first
    assert cal.choose([second, first], 0.02).candidate is second
    with pytest.raises(ValueError, match="no candidates"):
        cal.choose([], 0.02)


def test_baselines_are_the_exact_patterns_at_half_the_layers_and_spread_subsets_otherwise():
    ranking = [5, 9, 0, 2, 11, 7, 1, 3, 4, 6, 8, 10]
    got = dict(cal.baseline_candidates(12, 6, ranking))
    assert got == {"odd": (1, 3, 5, 7, 9, 11), "even": (0, 2, 4, 6, 8, 10), "mass-top": (0, 2, 5, 7, 9, 11)}
    got = dict(cal.baseline_candidates(30, 4, list(range(30))))
    assert got["odd"] == (3, 11, 19, 27) and got["even"] == (2, 10, 18, 26) and got["mass-top"] == (0, 1, 2, 3)
    # above half: every odd layer, then even ones spread evenly
    assert dict(cal.baseline_candidates(6, 4, list(range(6))))["odd"] == (1, 2, 3, 5)
    assert dict(cal.baseline_candidates(6, 0, list(range(6)))) == {"odd": (), "even": (), "mass-top": ()}
    with pytest.raises(ValueError, match="full-layers"):
        cal.baseline_candidates(6, 7, list(range(6)))


class CountingEvaluate:
    """NLL = base - the summed true importance of the full layers; FA decode gains a fixed amount."""

    def __init__(self, importance: dict[int, float], fa_gain: float = 0.0, base: float = 3.0):
        self.importance, self.fa_gain, self.base = importance, fa_gain, base
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, layers):
        self.calls.append(layers)
        off = self.base - sum(self.importance.get(i, 0.0) for i in layers)
        return off, off - self.fa_gain


def test_greedy_swaps_fix_a_mass_ranking_that_misses_an_important_layer():
    # Truly important: 5 and 6. The mass proxy ranks 6 first but 5 only third, behind 3.
    evaluate = CountingEvaluate({5: 1.0, 6: 0.8, 3: 0.1})
    ranking = [6, 3, 5, 0, 1, 2, 4, 7]
    choice, candidates = cal.search_layer_sets(8, 2, ranking, evaluate, threshold=0.02, swap_rounds=2, swap_width=2)
    by_name = {c.name: c for c in candidates}
    assert by_name["mass-top"].layers == (3, 6)  # the best baseline (even is 2,6; odd 3,7)
    assert choice.candidate.layers == (5, 6) and choice.candidate.name == "swap1:-3+5"
    assert choice.fa_decode is False  # the evaluator gives FA decode nothing
    # at least as good as odd and even, under the same rule
    assert choice.candidate.objective(0.02) <= min(by_name["odd"].objective(0.02), by_name["even"].objective(0.02))
    # each distinct set evaluated once; a set proposed twice keeps its first name and records the other
    assert len(evaluate.calls) == len(set(evaluate.calls)) == len(candidates)


def test_search_stops_when_no_swap_helps_and_returns_the_best_baseline():
    # odd is optimal; no swap can beat it, so one round of swaps is tried and the search stops
    evaluate = CountingEvaluate({1: 1.0, 3: 1.0, 5: 1.0}, fa_gain=0.5)
    ranking = [0, 2, 4, 1, 3, 5]
    choice, candidates = cal.search_layer_sets(6, 3, ranking, evaluate, threshold=0.02, swap_rounds=5, swap_width=1)
    assert choice.candidate.name == "odd" and choice.candidate.layers == (1, 3, 5)
    assert choice.fa_decode is True and choice.nll == pytest.approx(3.0 - 3.0 - 0.5)
    rounds = {c.name.split(":")[0] for c in candidates if c.name.startswith("swap")}
    assert rounds == {"swap1"}  # round 2 never ran


@pytest.mark.parametrize("budget", [0, 6])
def test_search_with_no_choice_to_make_evaluates_one_set(budget):
    evaluate = CountingEvaluate({0: 0.5})
    choice, candidates = cal.search_layer_sets(6, budget, list(range(6)), evaluate, swap_rounds=3)
    assert evaluate.calls == [tuple(range(budget))]
    assert choice.candidate.layers == tuple(range(budget)) and choice.candidate.also_named == ["even", "mass-top"]


# -- the out-of-window mass, blockwise against a full softmax ----------------------------------------
def _brute_force_mass(query, key, q_positions, window, keep_first, scaling):
    """Full softmax over all keys (causal), then the mass on the keys the SWAA rule hides."""
    groups = query.shape[0] // key.shape[0]
    k = key.double().repeat_interleave(groups, dim=0)  # [Hq, L, D], transformers' repeat_kv layout
    scores = (query.double() @ k.transpose(1, 2)) * scaling  # [Hq, nq, L]
    k_pos = torch.arange(key.shape[1])
    causal = k_pos[None, :] <= q_positions[:, None]
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    config = SWAAConfig(sliding_window_size=window, keep_first=keep_first)
    hidden = causal & ~visibility_mask(config, 0, q_positions, k_pos)
    return (probs * hidden).sum(-1)


@pytest.mark.parametrize("window,keep_first,key_block", [(8, 0, 5), (8, 3, 7), (1, 2, 64), (16, 4, 3), (40, 0, 11)])
@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4), (3, 1)])
def test_blockwise_out_of_window_mass_equals_a_full_softmax(window, keep_first, key_block, heads, kv_heads):
    gen = torch.Generator().manual_seed(window * 100 + keep_first * 10 + heads)
    length, dim = 37, 8
    query_all = torch.randn(heads, length, dim, generator=gen) * 2
    key = torch.randn(kv_heads, length, dim, generator=gen) * 2
    q_positions = torch.tensor([0, 2, 5, 9, 10, 17, 23, 30, 36])
    mass = cal.out_of_window_mass(query_all[:, q_positions], key, q_positions, window, keep_first, 0.3, key_block)
    expected = _brute_force_mass(query_all[:, q_positions], key, q_positions, window, keep_first, 0.3)
    assert mass.shape == (heads, len(q_positions))
    torch.testing.assert_close(mass.double(), expected, atol=2e-6, rtol=1e-5)
    # queries whose window and sinks cover every causal key lose nothing, exactly
    covered = q_positions < window + keep_first
    assert torch.all(mass[:, covered] == 0)
    if not covered.all():
        assert float(expected.max()) > 0.05  # the case is not trivial: some query loses real mass


def test_gqa_query_heads_read_their_own_key_head():
    # key head 0 puts all its weight far back, key head 1 on the query itself: per-head masses split 1 / 0
    length, dim = 20, 4
    key = torch.zeros(2, length, dim)
    key[0, 2, 0] = 50.0  # an old key only head group 0 matches
    key[1, length - 1, 1] = 50.0  # the newest key only head group 1 matches
    query = torch.zeros(4, 1, dim)  # 4 query heads, 2 per key head
    query[:2, 0, 0] = 1.0
    query[2:, 0, 1] = 1.0
    mass = cal.out_of_window_mass(query, key, torch.tensor([length - 1]), window=4, keep_first=0, scaling=1.0)
    torch.testing.assert_close(mass[:, 0], torch.tensor([1.0, 1.0, 0.0, 0.0]), atol=1e-6, rtol=0)


# -- the recipe ------------------------------------------------------------------------------------
def _fake_run(layers=(1, 4), fa=True):
    scan = cal.LayerScan([cal.LayerScore(i, 0.1 * i, 0.1 * i, None if i == 0 else 0.05) for i in range(6)], 0.5)
    ranking = cal.rank_layers([s.score for s in scan.scores])
    candidates = [C("odd", [1, 3], 2.0, 1.9), C("swap1:-3+4", layers, 1.5, 1.0 if fa else 1.5)]
    choice = cal.choose(candidates, 0.02)
    prompts = build_prompts(_WordTokenizer(), 2, 300, 64, corpus=EssayCorpus(_WordTokenizer(), [_ESSAY]))
    meta = cal.calibration_metadata(
        model="tiny", model_path="/models/tiny", num_layers=6, window=64, keep_first=4, budget=2, length=300,
        prompts=prompts, seed=0, n_keys=4, background_queries=8, dtype="float32", device="cpu", scan=scan,
        ranking=ranking, candidates=candidates, choice=choice, swap_rounds=1, swap_width=1, elapsed_s=1.0,
        date="2026-01-02T03:04:05+00:00",
    )
    return cal.recipe_config(64, 4, choice), meta, choice


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_the_recipe_round_trips_through_swaa_config_from_file(tmp_path, suffix):
    config, meta, choice = _fake_run()
    out = tmp_path / f"recipe{suffix}"
    files = cal.write_recipe(out, config, meta)
    read = SWAAConfig.from_file(out)
    assert read == config
    assert read.non_sliding_layers.resolve(6) == [1, 4] and read.force_fa_decode is True
    assert read.sliding_window_size == 64 and read.keep_first == 4
    if suffix == ".json":
        assert files == [out, tmp_path / "recipe.calibration.json"]
        side = json.loads(files[1].read_text())
        assert side["recipe"] == "recipe.json" and side["chosen"]["non_sliding_layers"] == [1, 4]
        return
    text = out.read_text()
    header = text.split("swaa:")[0].splitlines()
    assert header and all(line.startswith("# ") for line in header)
    assert "2026-01-02T03:04:05+00:00" in header[0] and any("tiny" in line for line in header)
    assert any("full layers: 1,4" in line for line in header)
    assert any("FA decode on" in line for line in header)
    data = yaml.safe_load(text)["calibration"]
    assert data["method"] == cal.METHOD and data["model"] == "tiny" and data["date"] == "2026-01-02T03:04:05+00:00"
    assert data["prompts"]["length_requested"] == 300 and len(data["prompts"]["lengths"]) == 2
    assert [row["layer"] for row in data["layer_scores"]] == list(range(6))
    assert data["layer_scores"][5]["rank"] == 1 and data["layer_scores"][0]["background_mass"] is None
    assert [c["name"] for c in data["candidates"]] == ["odd", "swap1:-3+4"]
    assert data["chosen"] == {"candidate": "swap1:-3+4", "non_sliding_layers": [1, 4], "force_fa_decode": True,
                              "nll": 1.0, "fa_decode_gain": 0.5, "fa_decode_threshold": 0.02}


def test_a_recipe_without_fa_decode_says_so(tmp_path):
    config, meta, choice = _fake_run(fa=False)
    assert choice.fa_decode is False
    out = tmp_path / "r.yaml"
    cal.write_recipe(out, config, meta)
    assert SWAAConfig.from_file(out).force_fa_decode is False
    assert "FA decode off" in out.read_text()


# -- the calibration prompts -----------------------------------------------------------------------
_ESSAY = " ".join(
    f"Sentence number {i} talks about startups and {'painting' if i % 3 else 'hackers'} at some length."
    for i in range(400)
)


class _WordTokenizer:
    """A whitespace tokenizer with offsets and no chat template: fast, and enough for the prompt logic."""

    chat_template = None

    def __call__(self, text, return_offsets_mapping=False, add_special_tokens=False, verbose=False):
        import re

        spans = [m.span() for m in re.finditer(r"\S+", text)]
        out = {"input_ids": [zlib.crc32(text[a:b].encode()) % 50000 for a, b in spans]}  # stable across runs
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out


def test_prompts_are_deterministic_within_the_length_and_put_the_target_out_of_the_window(smollm2_tokenizer):
    tok = smollm2_tokenizer
    corpus = EssayCorpus(tok)
    a = build_prompts(tok, 3, 1024, 128, seed=0, corpus=corpus)
    b = build_prompts(tok, 3, 1024, 128, seed=0, corpus=corpus)
    assert a == b
    for p in a:
        assert 1024 - 12 <= p.prompt_len + len(p.answer_ids) <= 1024
        assert p.target_outside_window and (p.prompt_len - 1) - (p.target_span[1] - 1) >= 128
        needle = tok.decode(p.prompt_ids[p.target_span[0]:p.target_span[1]]).strip()
        assert needle == NEEDLE.format(key=p.target_key, value=p.target_value)
        assert tok.decode(p.answer_ids) == " " + p.target_value
        text = tok.decode(p.prompt_ids)
        assert text.endswith(ANSWER_PREFIX.format(key=p.target_key))
        assert QUESTION.format(key=p.target_key) in text and INSTRUCTION in text
        assert all(NEEDLE.format(key=k, value=v) in text for k, v in p.needles)
        assert len({k for k, _ in p.needles}) == len({v.split("-")[0] for _, v in p.needles}) == 4
    assert len({p.prompt_ids for p in a}) == 3  # the prompts differ from each other


def test_another_seed_or_namespace_gives_disjoint_needles():
    tok = _WordTokenizer()
    corpus = EssayCorpus(tok, [_ESSAY])
    ours = build_prompts(tok, 4, 600, 64, seed=0, corpus=corpus)
    for other in (build_prompts(tok, 4, 600, 64, seed=1, corpus=corpus),
                  build_prompts(tok, 4, 600, 64, seed=0, namespace="ruler-test/v1", corpus=corpus)):
        assert {v for p in ours for _, v in p.needles}.isdisjoint({v for p in other for _, v in p.needles})
        assert all(x.prompt_ids != y.prompt_ids for x, y in zip(ours, other))


def test_the_vocabulary_shares_nothing_with_the_needle_benchmark():
    # read the benchmark's task as text (the core never imports benchmarks/)
    tree = ast.parse((ROOT / "benchmarks" / "niah" / "task.py").read_text())
    constants = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and n.targets[0].id in
                 ("CITIES", "NEEDLE", "QUESTION")}
    ours = {w.lower() for w in (*KEY_ADJECTIVES, *KEY_OBJECTS, *VALUE_WORDS)}
    assert len(constants["CITIES"]) > 10
    assert ours.isdisjoint(c.lower() for c in constants["CITIES"])
    assert "magic" not in (NEEDLE + QUESTION).lower() and "locker" not in constants["NEEDLE"].lower()


def test_a_length_too_short_for_the_frame_names_length():
    tok = _WordTokenizer()
    with pytest.raises(ValueError, match=r"^length: 40 tokens leave no room"):
        build_prompts(tok, 1, 40, 8, corpus=EssayCorpus(tok, [_ESSAY]))


# -- the CLI: errors name the flag ----------------------------------------------------------------
def _cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cal.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


BASE = ["--window", "128", "--full-layers", "4", "--length", "1024"]


@pytest.mark.parametrize("change,flag", [
    (["--window", "1024"], "--window: W = 1024 must be below --length"),
    (["--window", "0"], "--window: must be >= 1"),
    (["--keep-first", "900"], "--keep-first: W + k = 128 + 900"),
    (["--keep-first", "-1"], "--keep-first: must be >= 0"),
    (["--full-layers", "-2"], "--full-layers: the budget must be >= 0"),
    (["--length", "64", "--window", "32"], "--length: at least 128"),
    (["--prompts", "0"], "--prompts: at least 1"),
    (["--keys", "21"], "--keys: allowed 1..20"),
    (["--fa-decode-threshold", "-0.1"], "--fa-decode-threshold: must be >= 0"),
    (["--swap-width", "0"], "--swap-width: must be >= 1"),
    (["--background-queries", "-1"], "--background-queries: must be >= 0"),
])
def test_bad_values_are_refused_naming_the_flag(capsys, tmp_path, change, flag):
    err = _cli_error(capsys, [*BASE, "--out", str(tmp_path / "r.yaml"), *change])
    assert flag in err


def test_bad_out_and_model_are_refused_naming_the_flag(capsys, tmp_path):
    assert "--out: " in _cli_error(capsys, [*BASE, "--out", str(tmp_path / "r.txt")])
    assert "--out: no such directory" in _cli_error(capsys, [*BASE, "--out", str(tmp_path / "nope" / "r.yaml")])
    err = _cli_error(capsys, [*BASE, "--out", str(tmp_path / "r.yaml"), "--model", str(tmp_path / "missing")])
    assert "--model: " in err and "qwen2.5-coder-0.5b-instruct" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_cuda_without_cuda_names_device(capsys, tmp_path):
    assert "--device: 'cuda'" in _cli_error(capsys, [*BASE, "--out", str(tmp_path / "r.yaml"), "--device", "cuda"])


def test_budget_and_length_are_checked_against_the_model(capsys, tmp_path, smollm2_path):
    out = ["--out", str(tmp_path / "r.yaml"), "--model", smollm2_path]
    err = _cli_error(capsys, ["--window", "128", "--full-layers", "31", "--length", "1024", *out])
    assert "--full-layers: N = 31 is larger than the layer count of this model (30)" in err
    err = _cli_error(capsys, ["--window", "128", "--full-layers", "4", "--length", "9000", *out])
    assert "--length: 9000 tokens exceed the model's context (8192)" in err
    assert not (tmp_path / "r.yaml").exists()


def test_help_explains_the_method(capsys):
    with pytest.raises(SystemExit) as exc:
        cal.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for words in ("out-of-window", "outside", "greedy swaps", "FA decode pays", "--fa-decode-threshold", "odd"):
        assert words in text, words


# -- real weights (slow) -----------------------------------------------------------------------------
@pytest.mark.slow
def test_scan_masses_and_full_nll_match_stock_eager_attention(smollm2_path, smollm2_tokenizer, smollm2_stock):
    """The capture pass against transformers' own eager attention probabilities: the per-layer answer mass
    and the full-attention NLL."""
    from swaa_sglang.hf import load_model

    window, sinks = 96, 4
    prompts = build_prompts(smollm2_tokenizer, 1, 320, window)
    model = load_model(smollm2_path, device="cpu")
    scan = cal.Calibrator(model, prompts, window, sinks, progress=False).scan_layers(background_queries=0)

    p = prompts[0]
    ids = torch.tensor([p.input_ids])
    with torch.no_grad():
        out = smollm2_stock(input_ids=ids, output_attentions=True)
    n_answer = len(p.answer_ids)
    rows = torch.arange(p.prompt_len - 1, p.prompt_len + n_answer - 1)
    config = SWAAConfig(sliding_window_size=window, keep_first=sinks)
    k_pos = torch.arange(ids.shape[1])
    hidden = (k_pos[None] <= rows[:, None]) & ~visibility_mask(config, 0, rows, k_pos)
    expected = [float((att[0][:, rows] * hidden).sum(-1).mean()) for att in out.attentions]
    assert [s.answer_mass for s in scan.scores] == pytest.approx(expected, abs=2e-5)
    assert all(s.background_mass is None and s.score == s.answer_mass for s in scan.scores)
    assert max(expected) > 0.05
    logp = out.logits[0, p.prompt_len - 1 : p.prompt_len + n_answer - 1].log_softmax(-1)
    stock_nll = -float(logp[torch.arange(n_answer), torch.tensor(p.answer_ids)].mean())
    assert scan.full_attention_nll == pytest.approx(stock_nll, abs=1e-4)


@pytest.mark.slow
def test_evaluate_shares_the_prefill_and_matches_whole_sequence_forwards(smollm2_path, smollm2_tokenizer):
    """The two answer passes over one cropped cache give the NLL of a fresh teacher-forced forward per mode."""
    from swaa_sglang.hf import load_model, set_attention

    window, sinks, layers = 64, 4, (3, 7)
    prompts = build_prompts(smollm2_tokenizer, 1, 320, window)
    model = load_model(smollm2_path, device="cpu")
    nll_window, nll_fa = cal.Calibrator(model, prompts, window, sinks, progress=False).evaluate(layers)
    p = prompts[0]
    expected = []
    for fa in (False, True):
        cal.attach(model, SWAAConfig(sliding_window_size=window, keep_first=sinks, force_fa_decode=fa,
                                     non_sliding_layers=list(layers)))
        set_attention(model, "swaa_blockwise")
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p.input_ids]), swaa_prompt_len=p.prompt_len).logits[0]
        logp = logits[p.prompt_len - 1 : -1].log_softmax(-1)
        expected.append(-float(logp[torch.arange(len(p.answer_ids)), torch.tensor(p.answer_ids)].mean()))
    assert (nll_window, nll_fa) == pytest.approx(tuple(expected), abs=1e-4)
    assert nll_window - nll_fa > 0.05  # the target is out of the window: FA decode changes the answer's NLL


@pytest.mark.slow
def test_end_to_end_on_smollm2_writes_a_valid_recipe(capsys, tmp_path, smollm2_path):
    out = tmp_path / "smollm2.yaml"
    code = cal.main(["--model", smollm2_path, "--window", "64", "--keep-first", "4", "--full-layers", "4",
                     "--length", "512", "--prompts", "2", "--swap-rounds", "1", "--swap-width", "1",
                     "--background-queries", "16", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    config = SWAAConfig.from_file(out)
    meta = yaml.safe_load(out.read_text())["calibration"]
    chosen = meta["chosen"]
    assert config.sliding_window_size == 64 and config.keep_first == 4
    assert config.non_sliding_layers.resolve(30) == chosen["non_sliding_layers"]
    assert len(chosen["non_sliding_layers"]) == 4
    assert config.force_fa_decode is chosen["force_fa_decode"]
    assert chosen["force_fa_decode"] == (chosen["fa_decode_gain"] > chosen["fa_decode_threshold"])
    names = [c["name"] for c in meta["candidates"]]
    assert names[:2] == ["odd", "even"] and 2 <= len(names) <= 4  # mass-top or the swap may repeat a set
    objective = {c["name"]: c["objective"] for c in meta["candidates"]}
    chosen_row = next(c for c in meta["candidates"] if c["name"] == chosen["candidate"])
    assert chosen_row["objective"] <= min(objective["odd"], objective["even"])
    assert len(meta["layer_scores"]) == 30 and sorted(r["rank"] for r in meta["layer_scores"]) == list(range(1, 31))
    assert all(0.0 <= r["score"] <= 1.0 for r in meta["layer_scores"])
    assert meta["prompts"]["count"] == 2 and all(n <= 512 for n in meta["prompts"]["lengths"])
    assert 0 < meta["full_attention_nll"] < chosen["nll"]  # the window costs something on out-of-window targets
    # the summary table comes last
    assert printed.rstrip().splitlines()[-1] == f"recipe: {out}"
    assert "full attention everywhere: NLL" in printed and "<- chosen" in printed
