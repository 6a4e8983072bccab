"""benchmarks/quality_niah.py and render_quality.py: generator, scoring, runners, renderer (CPU, fast).

Placement is checked against the visibility rule itself (swaa_sglang.reference.visibility_mask):
an "inside" needle is seen through the window by every query that emits an answer token, an
"outside" one by none. The server runner talks to a fake OpenAI server on 127.0.0.1. The
blockwise attention and the shared-prefill decoding are checked against the package's
reference attention and ``generate`` on a tiny random Llama.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import quality_niah
import render_quality as rq
from fake_http import JSONHandler, LoopbackServer
from niah import benchmark, hf_runner, scoring, server_runner, task
from niah import settings as niah_settings

from swaa_sglang import SWAAConfig, hf, visibility_mask

WORDS = tuple(
    re.findall(
        r"[a-z]+",
        "river stone garden lamp winter harbor paper engine market violin forest signal copper window "
        "letter bridge meadow silver thunder candle orchard compass canyon",
    )
)


def synthetic_texts(n_paragraphs: int = 400, seed: int = 7) -> list[str]:
    """A digit-free haystack: sentences of common words, hard-wrapped like the essays."""
    rng = random.Random(seed)
    paras = []
    for _ in range(n_paragraphs):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
            for _ in range(rng.randint(2, 5))
        ]
        text = " ".join(sentences)
        paras.append("\n".join(text[i : i + 60] for i in range(0, len(text), 60)))
    return ["\n\n".join(paras[:200]), "\n\n".join(paras[200:])]


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def corpus(tok):
    return task.Corpus(tok, synthetic_texts())


# -- generator ------------------------------------------------------------------------------------
def test_corpus_unwraps_lines(corpus):
    assert "\n\n" in corpus.text
    assert re.search(r"[^\n]\n[^\n]", corpus.text) is None  # hard wraps joined, paragraphs kept


def test_generator_is_deterministic_and_paired(tok, corpus):
    a = task.make_samples(tok, corpus, 1024, 256, 3, seed=1)
    b = task.make_samples(tok, corpus, 1024, 256, 3, seed=1)
    assert a == b
    c = task.make_samples(tok, corpus, 1024, 256, 3, seed=2)
    assert [s.input_ids for s in a] != [s.input_ids for s in c]
    assert [s.position for s in a] == ["inside", "outside"] * 3
    for inside, outside in zip(a[::2], a[1::2]):  # paired: same needle, different place
        assert (inside.city, inside.value, inside.index) == (outside.city, outside.value, outside.index)
        assert inside.needle_span[0] > outside.needle_span[0]
    assert len({s.value for s in a}) == 3
    assert all(re.fullmatch(r"\d{7}", s.value) for s in a)


@pytest.mark.parametrize("context,window", [(1024, 256), (2048, 512), (4096, 1024)])
def test_needle_placement_against_the_visibility_rule(tok, corpus, context, window):
    max_new = 16
    cfg = SWAAConfig(sliding_window_size=window)
    for smp in task.make_samples(tok, corpus, context, window, 5, seed=3, max_new_tokens=max_new):
        ids, (start, end) = list(smp.input_ids), smp.needle_span
        n = len(ids)
        assert context - 24 <= n <= context
        assert ids == tok(smp.prompt, add_special_tokens=False).input_ids
        assert tok.decode(ids[start:end]).strip() == smp.needle
        assert smp.prompt.count(smp.value) == 1
        # The question (and the answer prefix) come after the needle.
        question_at = smp.prompt.rindex("What is the special magic number")
        assert len(tok(smp.prompt[:question_at], add_special_tokens=False).input_ids) >= end
        assert smp.prompt.endswith(smp.answer_prefix) and smp.answer_prefix
        # Queries that emit answer tokens: the last prompt token and the next max_new - 1 positions.
        queries = torch.arange(n - 1, n - 1 + max_new)
        seen = visibility_mask(cfg, 0, queries, torch.arange(start, end))
        if smp.position == "inside":
            assert bool(seen.all()), (smp.sample_id, smp.needle_span, n)
        else:
            assert not bool(seen.any()), (smp.sample_id, smp.needle_span, n)
            target = smp.target_depth * context
            assert abs(start - target) < 0.06 * context, (start, target)
            assert 0.09 <= smp.depth <= 0.72


def test_outside_depths_cycle(tok, corpus):
    depths = (0.2, 0.6)
    outs = task.make_samples(tok, corpus, 2048, 256, 4, positions=("outside",), outside_depths=depths)
    assert [s.target_depth for s in outs] == [0.2, 0.6, 0.2, 0.6]
    assert outs[0].depth < 0.3 and outs[1].depth > 0.5


def test_window_too_large_for_outside_is_refused(tok, corpus):
    with pytest.raises(ValueError):
        task.make_sample(tok, corpus, 1024, 1000, "outside", 0, outside_depths=(0.7,))


def test_no_answer_prefix(tok, corpus):
    smp = task.make_sample(tok, corpus, 1024, 256, "inside", 0, use_answer_prefix=False)
    assert smp.answer_prefix == ""
    assert smp.prompt.endswith("<|im_start|>assistant\n")
    assert smp.messages[-1]["content"].endswith(task.QUESTION.format(city=smp.city))


# -- scoring --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer,ok",
    [
        (" 4519543.", True),
        ("The special magic number for Oslo is 4519543", True),
        ("4519543", True),
        (" 45195.", False),
        (" 45195430.", False),
        ("14519543", False),
        (" 4519544.", False),
        ("", False),
        ("4 519 543", False),
    ],
)
def test_score(answer, ok):
    assert scoring.score(answer, "4519543") is ok


def test_settings_and_prefill_groups():
    settings = {s.name: s for s in niah_settings.build_settings(512, 64)}
    assert list(settings) == list(niah_settings.DEFAULT_SETTINGS)
    assert settings["full"].config == SWAAConfig()
    assert settings["sw+sink+fa+odd"].config == SWAAConfig(
        sliding_window_size=512, keep_first=64, force_fa_decode=True, non_sliding_layers="odd"
    )
    key = {n: niah_settings.prefill_key(s.config, 30) for n, s in settings.items()}
    assert key["sw"] == key["sw+fa"] and key["sw+sink"] == key["sw+sink+fa"]
    assert key["sw+sink+odd"] == key["sw+sink+fa+odd"]
    assert len(set(key.values())) == 4
    with pytest.raises(ValueError, match="unknown setting"):
        niah_settings.build_settings(512, names=["nope"])


def test_presets_even_layers_and_recipe_files_are_settings(tmp_path):
    from swaa_sglang.config import preset_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("swaa:\n  sliding_window_size: 2048\n  keep_first: 100\n  non_sliding_layers: [0, 5, 7]\n"
                      "evidence: {chosen_by: test}\n")
    got = niah_settings.build_settings(2048, 100, ["half-full-4k", "sw+sink+fa+even", "mine=" + str(recipe)])
    assert [s.name for s in got] == ["half-full-4k", "sw+sink+fa+even", "mine"]
    assert got[0].config == preset_config("half-full-4k")
    assert got[1].config == SWAAConfig(sliding_window_size=2048, keep_first=100, force_fa_decode=True,
                                       non_sliding_layers="even")
    assert got[2].config == SWAAConfig(sliding_window_size=2048, keep_first=100, non_sliding_layers=[0, 5, 7])
    # a preset keeps its own window at any sweep window, and needle placement is judged against it
    assert niah_settings.build_settings(512, 100, ["half-full-4k"])[0].config == got[0].config
    assert got[0].placement_window(2048) == 4096 and got[2].placement_window(512) == 2048
    assert niah_settings.build_settings(512, 100, ["full"])[0].placement_window(512) == 512
    # NAME may not be a built-in setting's or a preset's name, so every name in a report means one config
    with pytest.raises(ValueError, match=r"settings: 'balanced=.*' needs a new NAME"):
        niah_settings.build_settings(2048, 100, ["balanced=" + str(recipe)])
    with pytest.raises(ValueError, match=r"swaa_config: cannot read '.*missing.yaml'"):
        niah_settings.build_settings(2048, 100, ["x=" + str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match=r"unknown setting 'window-3k'; allowed: .*a preset \(full, window-2k"):
        niah_settings.build_settings(2048, 100, ["window-3k"])


# -- server runner against a fake OpenAI server ------------------------------------------------------
class FakeOpenAI(LoopbackServer):
    """Answers with the needle's number for even sample indices and a wrong number for odd ones."""

    def __init__(self, tokenizer):
        self.requests: list[tuple[str, dict]] = []
        outer = self

        class Handler(JSONHandler):
            def do_GET(self):
                outer.requests.append((self.path, {}))
                self._json({"object": "list", "data": [{"id": "fake-smollm2", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                if self.path == "/v1/completions":
                    prompt = body["prompt"]
                    text = tokenizer.decode(prompt) if isinstance(prompt, list) else prompt
                else:
                    text = body["messages"][-1]["content"]
                value = re.search(r"magic number for [A-Za-z ]+ is (\d{7})\.", text).group(1)
                city = re.search(r"magic number for ([A-Za-z ]+) mentioned", text).group(1)
                index = [c for c in task.CITIES].index(city)  # any deterministic split of the samples
                answer = f" {value}." if index % 2 == 0 else f" {int(value) - 1}."
                if self.path == "/v1/completions":
                    choice = {"index": 0, "text": answer, "finish_reason": "stop"}
                else:
                    choice = {"index": 0, "message": {"role": "assistant", "content": answer}}
                self._json({"choices": [choice], "usage": {"completion_tokens": 9}})

        self.serve(Handler)


@pytest.mark.parametrize("endpoint,prompt_format", [("completions", "ids"), ("completions", "text"), ("chat", "ids")])
def test_server_runner_with_fake_server(tok, corpus, endpoint, prompt_format):
    setting = niah_settings.Setting("balanced", "server config", SWAAConfig.from_dict({"preset": "balanced"}))
    with FakeOpenAI(tok) as fake:
        runner = server_runner.ServerRunner(fake.url, setting, max_new_tokens=12, endpoint=endpoint, prompt_format=prompt_format)
        records = benchmark.run_benchmark(
            runner,
            tok,
            corpus,
            [1024],
            [256],
            lambda w: [setting],
            samples=3,
            seed=5,
            max_new_tokens=12,
            progress=False,
        )
    assert fake.requests[0] == ("/v1/models", {})
    posts = fake.requests[1:]
    assert len(posts) == len(records) == 6
    samples = task.make_samples(tok, corpus, 1024, 256, 3, seed=5, max_new_tokens=12)
    for (path, body), smp, rec in zip(posts, samples, records):
        assert body["model"] == "fake-smollm2"
        assert body["max_tokens"] == 12 and body["temperature"] == 0
        if endpoint == "chat":
            assert path == "/v1/chat/completions"
            assert body["messages"] == [dict(m) for m in smp.messages]
            assert "prompt" not in body
        else:
            assert path == "/v1/completions"
            assert body["prompt"] == (list(smp.input_ids) if prompt_format == "ids" else smp.prompt)
        expect = task.CITIES.index(smp.city) % 2 == 0
        assert rec["correct"] is expect and rec["sample_id"] == smp.sample_id
        assert rec["setting"] == "balanced" and rec["answer_tokens"] == 9
    assert 0 < sum(r["correct"] for r in records) < len(records)  # both outcomes occur


def test_cli_server_run_writes_json_table_and_chart(tok, tmp_path):
    out = tmp_path / "q.json"
    swaa = '{"sliding_window_size": 256, "keep_first": 16, "force_fa_decode": true}'
    with FakeOpenAI(tok) as fake:
        argv = ["--runner", "server", "--server-url", fake.url, "--server-setting", "sw+sink+fa", "--server-swaa", swaa,
                "--context-lengths", "1024", "--windows", "256", "--samples", "2", "--no-progress", "--out", str(out),
                "--render"]  # fmt: skip
        assert quality_niah.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["transformers"]
    assert result["date"].startswith("20") and "--server-setting sw+sink+fa" in result["command"]
    [setting] = result["settings"]["256"]
    assert setting["name"] == "sw+sink+fa" and setting["config"] == json.loads(swaa) | {"non_sliding_layers": []}
    assert result["runner"]["endpoint"] == "completions" and result["task"]["samples_per_cell"] == 2
    assert len(result["records"]) == 4 and not (tmp_path / "q.json.partial.jsonl").exists()
    for rec in result["records"]:
        assert rec["correct"] is (task.CITIES.index(rec["city"]) % 2 == 0)
    summary = {r["position"]: (r["correct"], r["n"]) for r in result["summary"]}
    assert sorted(summary) == ["inside", "outside"] and all(n == 2 for _, n in summary.values())
    md = (tmp_path / "q.md").read_text()
    assert f"| sw+sink+fa | {rq.fmt_cell(*summary['inside'])} | {rq.fmt_cell(*summary['outside'])} |" in md
    assert (tmp_path / "q.png").stat().st_size > 10_000


def test_server_runner_refuses_non_loopback():
    setting = niah_settings.Setting("s", "", SWAAConfig())
    for url in ("http://10.1.2.3:30000", "http://example.com", "ftp://127.0.0.1:1"):
        with pytest.raises(ValueError, match="loopback"):
            server_runner.ServerRunner(url, setting)
    server_runner.ServerRunner("http://localhost:30000", setting)


# -- HF runner: blockwise attention and shared prefills on a tiny random Llama ----------------------------
@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    from swaa_sglang import hf

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=2,
        bos_token_id=1,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper logits than the default init: fewer near-ties in greedy decoding
        model.lm_head.weight.mul_(8)
    hf.register()
    return model


TINY_SETTINGS = [
    niah_settings.Setting("full", "", SWAAConfig()),
    niah_settings.Setting("sw", "", SWAAConfig(sliding_window_size=40)),
    niah_settings.Setting("sw+fa", "", SWAAConfig(sliding_window_size=40, force_fa_decode=True)),
    niah_settings.Setting("sw+sink", "", SWAAConfig(sliding_window_size=40, keep_first=5)),
    niah_settings.Setting("sw+sink+fa", "", SWAAConfig(sliding_window_size=40, keep_first=5, force_fa_decode=True)),
    niah_settings.Setting("sw+sink+fa+odd", "", SWAAConfig(40, 5, True, "odd")),
    niah_settings.Setting("sw+sink+fa01", "", SWAAConfig(40, 5, [0, 1], [3])),
]


@pytest.mark.slow
def test_blockwise_attention_equals_reference(tiny_llama, monkeypatch):
    monkeypatch.setattr(hf, "BLOCKWISE_QUERY_BLOCK", 32)  # several query blocks
    ids = torch.randint(3, 300, (1, 150), generator=torch.Generator().manual_seed(1))
    for s in TINY_SETTINGS:
        logits = {}
        for attention in ("reference", "blockwise"):
            hf_runner.use_config(tiny_llama, s.config, attention)
            with torch.no_grad():
                # 120 prompt tokens then 30 rows marked as decode rows: prefill and FA decode both exercised.
                logits[attention] = tiny_llama(ids, swaa_prompt_len=120).logits[0]
        torch.testing.assert_close(logits["blockwise"], logits["reference"], atol=2e-5, rtol=1e-5, msg=s.name)
    # The masks differ between settings (the test would catch an implementation that ignores them).
    hf_runner.use_config(tiny_llama, SWAAConfig(), "blockwise")
    with torch.no_grad():
        full = tiny_llama(ids).logits[0, -1]
    assert not torch.allclose(full, logits["blockwise"][-1], atol=1e-3)


def _attention_module(config: SWAAConfig, layer: int, num_layers: int = 4):
    """What swaa_sglang.hf's attention functions read from an attention module: its layer and the SWAA state."""
    import types

    return types.SimpleNamespace(layer_idx=layer, training=False,
                                 _swaa_state=hf._SWAAState(config.resolved(num_layers)))


@pytest.mark.parametrize("config", [
    SWAAConfig(sliding_window_size=24, keep_first=3),  # sinks: a block's keys are sinks + window
    SWAAConfig(sliding_window_size=24),
    SWAAConfig(sliding_window_size=24, keep_first=3, force_fa_decode=True),  # decode rows see everything
    SWAAConfig(sliding_window_size=24, keep_first=3, non_sliding_layers=[0]),  # layer 0 full
], ids=["sinks", "window", "fa-decode", "full-layer"])
@pytest.mark.parametrize("layer", [0, 1])
def test_blockwise_attention_forward_equals_the_eager_path(config, layer, monkeypatch):
    """hf.blockwise_attention_forward against hf.swaa_attention_forward on the same tensors: a prompt in
    several query blocks, then a chunk after a cache (prompt rows and decode rows), grouped-query heads."""
    monkeypatch.setattr(hf, "BLOCKWISE_QUERY_BLOCK", 16)
    gen = torch.Generator().manual_seed(layer)
    heads, kv_heads, dim = 4, 2, 8

    def qkv(q_len: int, kv_len: int):
        return (torch.randn(1, heads, q_len, dim, generator=gen), torch.randn(1, kv_heads, kv_len, dim, generator=gen),
                torch.randn(1, kv_heads, kv_len, dim, generator=gen))

    for q_len, kv_len, prompt_len in [(70, 70, 70), (30, 100, 90), (1, 101, 90)]:
        q, k, v = qkv(q_len, kv_len)
        out = {}
        for name, fn in (("eager", hf.swaa_attention_forward), ("blockwise", hf.blockwise_attention_forward)):
            module = _attention_module(config, layer)
            out[name], weights = fn(module, q, k, v, None, scaling=0.3, swaa_prompt_len=prompt_len)
            assert weights is None and out[name].shape == (1, q_len, heads, dim)
        torch.testing.assert_close(out["blockwise"], out["eager"], atol=1e-5, rtol=1e-5,
                                   msg=f"q {q_len}, kv {kv_len}, prompt {prompt_len}")
    # the window matters here: full attention gives another output for the last chunk's queries
    full, _ = hf.swaa_attention_forward(_attention_module(SWAAConfig(), layer), q, k, v, None, scaling=0.3,
                                        swaa_prompt_len=prompt_len)
    if config.is_sliding(layer) and not config.uses_fa_decode(layer):
        assert not torch.allclose(full, out["blockwise"], atol=1e-3)


def test_blockwise_attention_refuses_what_it_cannot_compute(tiny_llama):
    module = _attention_module(SWAAConfig(sliding_window_size=8), 0)
    q, k = torch.zeros(2, 4, 5, 8), torch.zeros(2, 2, 5, 8)
    with pytest.raises(ValueError, match="batch size 1 only; got 2"):
        hf.blockwise_attention_forward(module, q, k, k, None)
    with pytest.raises(ValueError, match="expects no attention mask"):
        hf.blockwise_attention_forward(module, q[:1], k[:1], k[:1], torch.ones(1, 1, 5, 5, dtype=torch.bool))
    import types

    with pytest.raises(ValueError, match="attach a SWAA config first"):
        hf.blockwise_attention_forward(types.SimpleNamespace(layer_idx=0), q[:1], k[:1], k[:1], None)
    with pytest.raises(ValueError, match="implementation: 'sdpa'; allowed: swaa, swaa_blockwise"):
        hf.set_attention(tiny_llama, "sdpa")


class _StubTokenizer:
    eos_token_id = 2

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.slow
def test_hf_runner_shared_prefill_matches_generate(tiny_llama, monkeypatch):
    monkeypatch.setattr(hf, "BLOCKWISE_QUERY_BLOCK", 32)
    prompt = torch.randint(3, 300, (100,), generator=torch.Generator().manual_seed(2)).tolist()
    runner = hf_runner.HFRunner(tiny_llama, _StubTokenizer(), max_new_tokens=12, attention="blockwise")
    smp = type("S", (), {"input_ids": tuple(prompt)})()
    got = runner.answer(smp, TINY_SETTINGS)
    assert list(got) == [s.name for s in TINY_SETTINGS]
    for s in TINY_SETTINGS:
        hf_runner.use_config(tiny_llama, s.config, "reference")
        with torch.no_grad():
            out = tiny_llama.generate(
                torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=0
            )
        expect = [t for t in out[0, len(prompt) :].tolist()]
        text = " ".join(str(t) for t in expect if t != 2)
        assert got[s.name].text == text, s.name
        assert got[s.name].tokens == len(expect)
    # FA decode changes the answer somewhere, else the decode-sharing path is not exercised.
    assert got["sw"].text != got["sw+fa"].text or got["sw+sink"].text != got["sw+sink+fa"].text


# -- renderer ---------------------------------------------------------------------------------------
def _small_result() -> dict:
    records = []
    outcome = {
        ("full", "inside"): [1, 1],
        ("full", "outside"): [1, 0],
        ("sw", "inside"): [1, 0],
        ("sw", "outside"): [0, 0],
    }
    for (setting, position), results in outcome.items():
        for i, ok in enumerate(results):
            records.append(
                {
                    "context_length": 4096,
                    "window": 512,
                    "setting": setting,
                    "position": position,
                    "index": i,
                    "correct": bool(ok),
                }
            )
    return {
        "date": "2026-11-28 00:00:00 UTC",
        "command": "python benchmarks/quality_niah.py --samples 2",
        "machine": {"cpu": "Test CPU", "cpu_count": 2, "torch": "2.11.0", "transformers": "5.12.1"},
        "runner": {"runner": "hf", "device": "cpu", "dtype": "float32"},
        "task": {"samples_per_cell": 2, "max_new_tokens": 16},
        "settings": {
            "512": [
                {"name": "full", "description": "full attention", "config": SWAAConfig().to_dict()},
                {"name": "sw", "description": "window 512", "config": SWAAConfig(512).to_dict()},
            ]
        },
        "records": records,
    }


def test_renderer_table_and_png(tmp_path):
    result = _small_result()
    md = rq.markdown(result)
    assert "| full | 100% (2/2) | 50% (1/2) | full attention |" in md
    assert "| sw | 50% (1/2) | 0% (0/2) | window 512 |" in md
    assert md.index("| full |") < md.index("| sw |")
    assert "Test CPU" in md and "torch 2.11.0" in md and "--samples 2" in md and "2026-11-28" in md
    assert '"sliding_window_size": 512' in md
    import matplotlib  # noqa: F401  (in the test extra, so the chart is tested in CI)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    md_path, png_path = rq.render_files(path)
    assert md_path.read_text().count("| sw |") == 1
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 10_000


def test_renderer_compares_two_runs_sample_by_sample(tmp_path):
    """--compare: per setting, samples with the same id and prompt are compared on score and answer
    text; a sample whose prompt differs is counted apart, never compared; launch servers are listed."""
    def run(answers: dict[tuple[str, int], tuple[bool, str]], sha: str = "abc") -> dict:
        result = _small_result()
        result["records"] = [
            {"context_length": 4096, "window": 512, "setting": s, "position": "inside", "index": i,
             "sample_id": f"L4096-W512-inside-{i}", "prompt_sha256": sha if i else "first", "correct": ok,
             "answer": text}
            for (s, i), (ok, text) in answers.items()
        ]
        return result

    gpu = run({("full", 0): (True, " 12."), ("full", 1): (True, " 34."), ("sw", 0): (False, " no"),
               ("sw", 1): (True, " 56. More")})
    cpu = run({("full", 0): (True, " 12. More"), ("full", 1): (True, " 34."), ("sw", 0): (False, " no"),
               ("sw", 1): (False, " 5")})
    assert rq.agreement(gpu, cpu) == {
        "full": {"compared": 2, "same_score": 2, "same_answer": 1, "other_prompt": 0},
        "sw": {"compared": 2, "same_score": 1, "same_answer": 1, "other_prompt": 0},
    }
    moved = run({("full", 0): (True, " 12."), ("full", 1): (True, " 34.")}, sha="other")
    assert rq.agreement(gpu, moved)["full"] == {"compared": 1, "same_score": 1, "same_answer": 1, "other_prompt": 1}

    gpu["runner"] = {"runner": "launch", "servers": [{"settings": ["full"], "windows": [512], "flags": "--attention-backend "
                                                      "flashinfer", "start_seconds": 12.5, "log": "server_0_full.log"}]}
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    (tmp_path / "cpu.json").write_text(json.dumps(cpu))
    assert rq.main([str(tmp_path / "gpu.json"), "--compare", str(tmp_path / "cpu.json")]) == 0
    md = (tmp_path / "gpu.md").read_text()
    assert "## Agreement with `cpu.json`" in md
    assert "| sw | 2 | 1 | 1 | 0 |" in md and "| all | 4 | 3 | 2 | 0 |" in md
    assert "server for full (windows [512]): `--attention-backend flashinfer`; up in 12.5 s" in md
    assert "servers=" not in md  # listed one per line, not dumped into the runner line

def test_wilson_interval():
    lo, hi = scoring.wilson(0, 10)
    assert lo == 0 and 0.2 < hi < 0.35
    lo, hi = scoring.wilson(5, 10)
    assert lo < 0.5 < hi
    assert scoring.wilson(10, 10)[1] == 1.0
    for n in range(1, 41):  # error bars must never be negative
        for k in range(n + 1):
            lo, hi = scoring.wilson(k, n)
            assert 0 <= lo <= k / n <= hi <= 1, (k, n, lo, hi)


# -- launch runner: one server per setting, started and stopped here ---------------------------------
FAKE_SERVER = r'''
"""A stand-in for `python -m swaa_sglang.launch_server`: records its flags, answers the needle
when its config can see it (full attention, or any sinks: a rule the test can predict)."""
import json, os, re, sys
from http.server import ThreadingHTTPServer
from fake_http import JSONHandler  # tests/ is on the launched process's PYTHONPATH

argv = sys.argv[1:]
flag = lambda name: argv[argv.index(name) + 1] if name in argv else None
config = json.load(open(flag("--swaa-config"))) if flag("--swaa-config") else None
with open(os.environ["FAKE_LAUNCHES"], "a") as f:
    f.write(json.dumps({"argv": argv, "config": config, "pid": os.getpid()}) + "\n")
sees_needle = config is None or config["keep_first"] > 0
if config and config["keep_first"] > 0 and os.environ.get("FAKE_FAIL_SINKS"):
    sys.exit("fake: refusing to start with sinks")

class Handler(JSONHandler):
    def do_GET(self):
        self._json({"data": [{"id": "fake:" + flag("--model-path")}]} if self.path == "/v1/models" else {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        value = re.search(r"magic number for [A-Za-z ]+ is (\d{7})\.", body["prompt"]).group(1)
        answer = f" {value}." if sees_needle else " 1234567."
        self._json({"choices": [{"text": answer}], "usage": {"completion_tokens": 4}})

ThreadingHTTPServer(("127.0.0.1", int(flag("--port"))), Handler).serve_forever()
'''


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fake_launch_command(tmp_path: Path, monkeypatch) -> tuple[str, Path]:
    """The fake server as a --launch-command, and the file where each launch records itself."""
    import os

    fake = tmp_path / "fake_server.py"
    fake.write_text(FAKE_SERVER)
    launches = tmp_path / "launches.jsonl"
    monkeypatch.setenv("FAKE_LAUNCHES", str(launches))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    return f"{sys.executable} {fake}", launches


@pytest.mark.slow
def test_launch_runner_starts_one_server_per_config(smollm2_path, tmp_path, monkeypatch):
    """Full attention is one config at every window, so one stock-SGLang server answers it for both;
    every other (window, setting) gets a swaa server with its config as a file; each server is
    stopped before the next starts, and the answers land under the right setting."""
    import os

    command, launches = _fake_launch_command(tmp_path, monkeypatch)
    out = tmp_path / "q_launch.json"
    argv = ["--runner", "launch", "--launch-command", command, "--model-path", smollm2_path,
            "--launch-args", "--mem-fraction-static 0.5", "--port", str(_free_port()), "--prompt-format", "text",
            "--settings", "full,sw,sw+sink", "--windows", "256,512", "--context-lengths", "1024", "--samples", "2",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert quality_niah.main(argv) == 0
    result = json.loads(out.read_text())
    started = [json.loads(line) for line in launches.read_text().splitlines()]
    assert len(started) == len(result["runner"]["servers"]) == 5  # full once, then sw and sw+sink per window
    full = [s for s in started if s["config"] is None]
    assert len(full) == 1 and "--attention-backend" in full[0]["argv"]
    assert full[0]["argv"][full[0]["argv"].index("--attention-backend") + 1] == "flashinfer"
    swaa = sorted((s["config"]["sliding_window_size"], s["config"]["keep_first"]) for s in started if s["config"])
    assert swaa == [(256, 0), (256, task.DEFAULT_SINKS), (512, 0), (512, task.DEFAULT_SINKS)]
    for s in started:
        assert s["argv"][s["argv"].index("--model-path") + 1] == smollm2_path
        assert "--mem-fraction-static" in s["argv"] and "--swaa-preset" not in s["argv"]
        with pytest.raises(ProcessLookupError):  # stopped
            os.kill(s["pid"], 0)
    servers = {tuple(s["settings"]): s for s in result["runner"]["servers"]}
    assert servers[("full",)]["windows"] == [256, 512] and servers[("full",)]["model"] == f"fake:{smollm2_path}"
    assert all((out.with_suffix("") / s["log"]).exists() for s in result["runner"]["servers"])
    cells = {(r["window"], r["setting"], r["position"]): (r["correct"], r["n"]) for r in result["summary"]}
    assert len(cells) == 12 and all(n == 2 for _, n in cells.values())
    for (w, name, pos), (correct, n) in cells.items():
        assert correct == (n if name in ("full", "sw+sink") else 0), (w, name, pos)
    assert [s["name"] for s in result["settings"]["512"]] == ["full", "sw", "sw+sink"]


@pytest.mark.slow
def test_launch_runner_goes_on_after_a_server_that_fails(smollm2_path, tmp_path, monkeypatch):
    """A setting whose server does not start is recorded with its error; the other settings still
    run, the JSON is written, and the exit status says something failed."""
    command, _ = _fake_launch_command(tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_FAIL_SINKS", "1")
    out = tmp_path / "q_fail.json"
    argv = ["--runner", "launch", "--launch-command", command, "--model-path", smollm2_path,
            "--port", str(_free_port()), "--prompt-format", "text", "--settings", "full,sw+sink,sw",
            "--windows", "256", "--context-lengths", "1024", "--samples", "1", "--no-progress", "--out", str(out)]
    assert quality_niah.main(argv) == 1
    result = json.loads(out.read_text())
    servers = {s["settings"][0]: s for s in result["runner"]["servers"]}
    assert "exited" in servers["sw+sink"]["error"] and "error" not in servers["full"] and "error" not in servers["sw"]
    assert {r["setting"] for r in result["records"]} == {"full", "sw"} and len(result["records"]) == 4


def test_niah_refuses_a_setting_whose_window_is_not_the_sweeps(capsys):
    """quality_niah places needles for --windows; a preset with another window is refused, naming the flag."""
    import quality_niah

    with pytest.raises(SystemExit):
        quality_niah.main(["--windows", "512", "--settings", "full,half-full-4k"])
    assert "--settings: half-full-4k has its own window 4096" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality_niah.main(["--windows", "512", "--settings", "x=/nonexistent.yaml"])
    assert "--settings: swaa_config: cannot read" in capsys.readouterr().err
