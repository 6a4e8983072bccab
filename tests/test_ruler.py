"""benchmarks/ruler (RULER-style tasks) and benchmarks/quality_ruler.py (CPU, fast unless marked).

The generator is checked from the outside: prompts re-tokenize to their ids and fit the length,
needles decode at the reported positions, variable chains and word counts are re-derived from the
prompt text, the splits share nothing. Scoring is checked on perfect, wrong and partial answers;
the CLI against a fake OpenAI server that solves the tasks from the prompt on its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import quality_ruler  # noqa: E402
from fake_http import JSONHandler, LoopbackServer  # noqa: E402
from niah.task import Corpus  # noqa: E402
from ruler import scoring, task  # noqa: E402

from swaa_sglang import SWAAConfig, visibility_mask  # noqa: E402

NEEDLE_TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "vt")


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def corpus(tok):
    return Corpus(tok)  # the shipped essays


def user_text(sample: task.RulerSample) -> str:
    return sample.messages[0]["content"]


def task_part(sample: task.RulerSample, marker: str) -> str:
    """The prompt's last task (after the worked example, which repeats the instructions)."""
    text = user_text(sample)
    return text[text.rindex(marker) :]


def resolve_chains(text: str) -> dict[str, str]:
    """Each variable's value, following 'VAR X = VAR Y' back to 'VAR Z = 12345' (each assigned once)."""
    rhs: dict[str, str] = {}
    for var, right in re.findall(r"VAR ([A-Z]+) = (VAR [A-Z]+|\d+)", text):
        assert var not in rhs, f"{var} assigned twice"
        rhs[var] = right
    values = {}
    for var in rhs:
        v = rhs[var]
        while v.startswith("VAR "):
            v = rhs[v[4:]]
        values[var] = v
    return values


def numbered_words(text: str) -> list[str]:
    """The words of a '1. w 2. w ...' list, checking that the numbering runs 1, 2, 3, ..."""
    entries = re.findall(r"(\d+)\. ([a-z]+)", text)
    assert [int(n) for n, _ in entries] == list(range(1, len(entries) + 1))
    return [w for _, w in entries]


def cwe_list(sample: task.RulerSample) -> list[str]:
    part = task_part(sample, "Below is a numbered list")
    return numbered_words(part[part.index("\n") + 1 : part.index("\nQuestion:")])


def perfect_answer(sample: task.RulerSample) -> str:
    if sample.task == "cwe":
        return " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(sample.expected))
    return " " + ", ".join(sample.expected) + "."


# -- scoring ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", task.TASKS)
def test_perfect_answer_scores_one_and_wrong_answer_zero(tok, corpus, name):
    sample = task.make_sample(tok, corpus, name, 1024, 0)
    assert scoring.score(perfect_answer(sample), sample.expected) == 1.0
    if name == "cwe":  # the list's other words, and the common ones inflected
        others = [w for w in dict.fromkeys(cwe_list(sample)) if w not in sample.expected][:10]
        wrong = " ".join(others) + " " + " ".join(w + "s" for w in sample.expected)
    elif name == "vt":  # longer names that contain the right ones
        wrong = " ".join(v + "X" for v in sample.expected) + " " + " ".join("Q" + v for v in sample.expected)
    else:  # the distractors' values, and the right values inside longer numbers
        distractors = [n.value for n in sample.needles if not n.is_answer]
        wrong = " ".join(distractors) + " " + " ".join(f"9{v} {v}0" for v in sample.expected)
    assert scoring.score(wrong, sample.expected) == 0.0
    assert scoring.score("", sample.expected) == 0.0


def test_partial_answers_score_the_fraction_found():
    four = ("1234567", "2345678", "3456789", "4567890")
    assert scoring.score("1234567 and 3456789", four) == 0.5
    assert scoring.score("1234567, 1234567, 1234567, 1234567", four) == 0.25  # repeats count once
    assert scoring.matches("3456789.", four) == [False, False, True, False]
    five = ("ABCDE", "FGHIJ", "KLMNO", "PQRST", "UVWXY")
    assert scoring.score("They are: abcde fghij, KLMNO", five) == 0.6  # any case
    ten = tuple(f"word{c}" for c in "abcdefghij")
    assert scoring.score(" ".join(ten[:7]) + " wordk", ten) == 0.7
    with pytest.raises(ValueError, match="expected"):
        scoring.score("x", ())


# -- generation -----------------------------------------------------------------------------------
def test_samples_are_a_function_of_their_arguments(tok, corpus):
    for name in task.TASKS:
        a = task.make_sample(tok, corpus, name, 1024, 3, seed=1)
        assert a == task.make_sample(tok, corpus, name, 1024, 3, seed=1)
        others = [
            task.make_sample(tok, corpus, name, 1024, 4, seed=1),
            task.make_sample(tok, corpus, name, 1024, 3, seed=2),
            task.make_sample(tok, corpus, name, 1024, 3, seed=1, split="calibration"),
        ]
        for b in others:
            assert b.prompt != a.prompt and b.expected != a.expected
        assert set(others[-1].expected).isdisjoint(a.expected)  # the other split
        assert len({s.sample_id for s in [a, *others]}) == 4
    with pytest.raises(ValueError, match="split"):
        task.make_sample(tok, corpus, "vt", 1024, 0, split="train")
    with pytest.raises(ValueError, match="task"):
        task.make_sample(tok, corpus, "qa", 1024, 0)


def test_calibration_and_test_splits_share_no_key_or_value(tok, corpus):
    # by construction: disjoint vocabularies
    assert set(task.key_vocabulary("test")).isdisjoint(task.key_vocabulary("calibration"))
    assert set(task.cwe_vocabulary(corpus, "test")).isdisjoint(task.cwe_vocabulary(corpus, "calibration"))
    # about 1,700 words each: 32K with the Qwen2.5 tokenizer takes about 1,200 (test_default_model_tokenizer...)
    assert min(len(task.cwe_vocabulary(corpus, split)) for split in task.SPLITS) > 1500
    for ranges in (task.NIAH_VALUE_RANGE, task.VT_VALUE_RANGE):
        assert ranges["test"][1] < ranges["calibration"][0]
    assert set(task.VT_FIRST_LETTERS["test"]).isdisjoint(task.VT_FIRST_LETTERS["calibration"])
    # and in the samples: every key, value, variable and common word, worked examples included
    strings: dict[str, set[str]] = {}
    for split in task.SPLITS:
        found = strings.setdefault(split, set())
        for name in task.TASKS:
            for index in range(6):
                s = task.make_sample(tok, corpus, name, 1024, index, split=split)
                found.update(s.expected)
                found.update(n.key for n in s.needles)
                found.update(n.value for n in s.needles)
                text = user_text(s)
                found.update(re.findall(r"VAR ([A-Z]{3,5})\b", text))
                found.update(re.findall(r"(?<!\d)\d{5}(?!\d)|(?<!\d)\d{7}(?!\d)", text) if name != "cwe" else [])
                if name == "cwe":
                    found.update(re.findall(r"\d+\. ([a-z]+)", text))  # the example's words and the task's
                    assert set(s.expected) <= set(task.cwe_vocabulary(corpus, split))
                elif name.startswith("niah"):
                    assert {n.key for n in s.needles} <= set(task.key_vocabulary(split))
                    lo, hi = task.NIAH_VALUE_RANGE[split]
                    assert all(lo <= int(v) <= hi for v in s.expected)
                else:
                    assert all(v[0] in task.VT_FIRST_LETTERS[split] for v in s.expected)
    shared = strings["test"] & strings["calibration"]
    assert shared <= set(re.findall(r"\d+", corpus.text))  # at most numbers of the essays both haystacks hold


@pytest.mark.parametrize("length", [4096, 8192])
@pytest.mark.parametrize("name", task.TASKS)
def test_prompt_length_is_within_tolerance(tok, corpus, name, length):
    for index in range(2):
        s = task.make_sample(tok, corpus, name, length, index)
        assert s.prompt_budget == length - task.MAX_NEW_TOKENS[name]
        assert s.prompt_budget - task.tolerance(length) <= s.prompt_tokens <= s.prompt_budget
        assert tok(s.prompt, add_special_tokens=False)["input_ids"] == list(s.input_ids)  # counted as sent
        templated = tok.apply_chat_template(list(s.messages), tokenize=False, add_generation_prompt=True)
        assert s.prompt == templated + s.answer_prefix


@pytest.mark.parametrize("name", NEEDLE_TASKS)
def test_needles_sit_at_the_reported_token_positions(tok, corpus, name):
    for index in range(3):
        s = task.make_sample(tok, corpus, name, 4096, index)
        answers = {"niah_single": 1, "niah_multikey": 1, "niah_multivalue": 4, "vt": 5}[name]
        assert len(s.needles) == {"niah_multikey": 4, "niah_multivalue": 4}.get(name, answers)
        assert sum(n.is_answer for n in s.needles) == answers
        for n in s.needles:
            a, b = n.span
            assert tok.decode(s.input_ids[a:b]).strip() == n.text
            assert n.depth in task.DEPTHS
        spans = [n.span for n in s.needles]
        assert spans == sorted(spans) and all(x[1] <= y[0] for x, y in zip(spans, spans[1:]))
        depths = [n.depth for n in s.needles]
        assert depths == sorted(depths)  # RULER: sorted depths, so prompt order follows depth
        if name.startswith("niah"):
            assert sorted(s.expected) == sorted(n.value for n in s.needles if n.is_answer)
            assert {n.key for n in s.needles if n.is_answer} == {s.query}
            assert user_text(s).endswith(f"for {s.query} mentioned in the provided text?")
            assert s.answer_prefix.startswith("The special magic number") and s.query in s.answer_prefix


def test_placement_follows_the_visibility_rule(tok, corpus):
    assert task.placement([], 1000, 100) == "spread"
    s = task.make_sample(tok, corpus, "niah_multikey", 4096, 1)
    [(start, end)] = s.answer_spans()
    last = s.prompt_tokens - 1
    for window in (last - start + 1, last - start, last - end + 1, last - end + 2, 64, 4096):
        sees = visibility_mask(SWAAConfig(sliding_window_size=window), 0, torch.tensor([last]),
                               torch.arange(start, end))[0]
        expect = "inside" if bool(sees.all()) else "outside" if not bool(sees.any()) else "mixed"
        assert s.placement(window) == expect, window
    assert {s.placement(w) for w in (last - start + 1, last - start, last - end + 1)} == {"inside", "mixed", "outside"}


@pytest.mark.parametrize("length", [1024, 4096])
def test_variable_chains_resolve_to_exactly_the_expected_set(tok, corpus, length):
    for index in range(4):
        s = task.make_sample(tok, corpus, "vt", length, index)
        values = resolve_chains(task_part(s, "Memorize and track"))
        assert {v for v, val in values.items() if val == s.query} == set(s.expected)
        assert len(s.expected) == task.VT_HOPS + 1 and all(len(v) == 5 for v in s.expected)
        example = resolve_chains(user_text(s)[: user_text(s).rindex("Memorize and track")])
        assert len(example) == task.VT_HOPS + 1 and len(set(example.values())) == 1  # one chain, 3-letter names
        assert s.query not in example.values() and all(len(v) == 3 for v in example)
        assert f"assigned the value {s.query}, they are:" in s.answer_prefix


@pytest.mark.parametrize("length,common,rare", [(1024, 6, 1), (4096, 30, 3)])
def test_common_words_have_a_unique_top_k(tok, corpus, length, common, rare):
    for index in range(3):
        s = task.make_sample(tok, corpus, "cwe", length, index)
        counts = Counter(cwe_list(s))
        top = counts.most_common()
        assert {w for w, _ in top[: task.CWE_COMMON]} == set(s.expected)
        assert top[task.CWE_COMMON - 1][1] > top[task.CWE_COMMON][1]  # a strict gap: the top k is unique
        assert {counts[w] for w in s.expected} == {common}
        assert {c for w, c in counts.items() if w not in s.expected} == {rare}
        example = user_text(s)[: user_text(s).rindex("Below is a numbered list")]
        assert set(re.findall(r"[a-z]+", example)).isdisjoint(counts)  # the worked example shares no word


# -- aggregation ----------------------------------------------------------------------------------
def test_wilson_intervals_on_known_counts():
    lo, hi = scoring.wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)  # the textbook 95% Wilson interval for 8/10
    assert (round(scoring.wilson(0, 10)[1], 4)) == 0.2775
    base = {"task": "niah_multivalue", "length": 4096, "window": 2048}
    records = [{**base, "setting": "full", "placement": "inside", "score": 1.0} for _ in range(8)]
    records += [{**base, "setting": "full", "placement": "outside", "score": s} for s in (0.5, 0.0)]
    records += [{**base, "setting": "sw", "placement": "outside", "score": 1.0} for _ in range(2)]
    full, sw = scoring.summarize(records)
    assert (full["n"], full["mean_score"], full["all_correct"], full["all_correct_wilson95"]) == (10, 0.85, 8, [0.4902, 0.9433])
    assert (sw["n"], sw["all_correct"], sw["all_correct_wilson95"]) == (2, 2, [0.3424, 1.0])
    split = {(r["setting"], r["placement"]): r for r in scoring.summarize(records, by_placement=True)}
    assert split[("full", "outside")]["mean_score"] == 0.25 and split[("full", "outside")]["all_correct"] == 0
    table = scoring.format_table(scoring.summarize(records)).splitlines()
    assert table[0].split()[:4] == ["task", "length", "window", "setting"]
    assert "8/10" in table[1] and "[0.490, 0.943]" in table[1]


# -- the CLI ---------------------------------------------------------------------------------------
def test_help_explains_the_benchmark():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quality_ruler.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--tasks", "--lengths", "--split", "--url", "--runner", "--by-placement", "--server-swaa"):
        assert flag in out.stdout
    assert "RULER-style" in out.stdout and "niah_single" in out.stdout


@pytest.mark.parametrize("argv,flag", [
    (["--tasks", "niah_single,qa"], "--tasks"),
    (["--lengths", "4k"], "--lengths"),
    (["--lengths", "300"], "--lengths"),
    (["--windows", "0"], "--windows"),
    (["--samples", "0"], "--samples"),
    (["--settings", "full,nope"], "--settings"),
    (["--split", "train"], "--split"),
    (["--runner", "server"], "--url"),
    (["--url", "http://10.1.2.3:30000"], "--url"),
    (["--runner", "hf", "--url", "http://127.0.0.1:30000"], "--url"),
    (["--url", "http://127.0.0.1:30000", "--server-swaa", "{window"], "--server-swaa"),
    (["--url", "http://127.0.0.1:30000", "--concurrency", "0"], "--concurrency"),
    (["--concurrency", "4"], "--concurrency"),
    (["--first-index", "-1"], "--first-index"),
])  # fmt: skip
def test_cli_errors_name_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        quality_ruler.main(argv)
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def solve(prompt: str) -> str:
    """The fake server's answer, worked out from the prompt alone: right for the needle tasks and vt,
    the worked example's words for cwe (so wrong)."""
    if "numbered list of words" in prompt:
        example_answer = re.search(r"most often in the list are: (.*?)\n", prompt).group(1)
        return " " + example_answer
    if "Memorize and track" in prompt:
        part = prompt[prompt.rindex("Memorize and track") :]
        query = re.findall(r"assigned the value (\d+) in the text above", part)[0]
        return " " + " ".join(v for v, val in resolve_chains(part).items() if val == query)
    key = re.findall(r"numbers? for (\S+) mentioned in the provided text", prompt)[0]
    return " " + ", ".join(re.findall(rf"magic numbers for {re.escape(key)} is: (\d+)\.", prompt)) + "."


class OracleServer(LoopbackServer):
    """An OpenAI-compatible fake on 127.0.0.1 that answers with :func:`solve`."""

    def __init__(self, tokenizer):
        self.requests: list[tuple[str, dict]] = []
        outer = self

        class Handler(JSONHandler):
            def do_GET(self):
                self._json({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                prompt = body["prompt"]
                text = solve(tokenizer.decode(prompt) if isinstance(prompt, list) else prompt)
                self._json({"choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                            "usage": {"completion_tokens": 7}})

        self.serve(Handler)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_cli_against_a_server_writes_every_answer_and_the_table_last(tok, smollm2_path, tmp_path, capsys,
                                                                     concurrency):
    out = tmp_path / "r.json"
    with OracleServer(tok) as fake:
        argv = ["--url", fake.url, "--model", smollm2_path, "--server-setting", "balanced",
                "--server-swaa", '{"preset": "balanced"}', "--lengths", "1024", "--samples", "2",
                "--windows", "256,512", "--no-progress", "--out", str(out), "--by-placement",
                "--concurrency", str(concurrency)]  # fmt: skip
        assert quality_ruler.main(argv) == 0
    # one request per (sample, config): the two windows share the server's config
    assert len(fake.requests) == 2 * len(task.TASKS)
    for path, body in fake.requests:
        assert path == "/v1/completions" and body["temperature"] == 0 and isinstance(body["prompt"], list)
    budgets = Counter(body["max_tokens"] for _, body in fake.requests)
    assert budgets == {128: 6, 30: 2, 120: 2}
    result = json.loads(out.read_text())
    assert result["benchmark"] == "quality_ruler" and result["task"]["split"] == "test"
    assert result["runner"]["runner"] == "server" and result["task"]["samples_per_cell"] == 2
    records = result["records"]
    assert len(records) == 2 * 2 * len(task.TASKS) and sum(r["reused"] for r in records) == len(records) // 2
    order = [(i, name, w) for i in range(2) for name in task.TASKS for w in (256, 512)]  # index first, any concurrency
    assert [(r["index"], r["task"], r["window"]) for r in records] == order
    for r in records:
        assert r["answer"].strip() and r["setting"] == "balanced"
        assert r["score"] == (0.0 if r["task"] == "cwe" else 1.0), r
        assert len(r["needles"]) == {"niah_multikey": 4, "niah_multivalue": 4, "vt": 5, "cwe": 0}.get(r["task"], 1)
        assert r["placement"] in ("inside", "outside", "mixed", "spread")
    cells = {(r["task"], r["window"]): r for r in result["summary"]}
    assert len(cells) == 2 * len(task.TASKS) and all(r["n"] == 2 for r in cells.values())
    assert cells[("vt", 256)]["all_correct_wilson95"] == [round(x, 4) for x in scoring.wilson(2, 2)]
    assert cells[("cwe", 512)]["mean_score"] == 0 and cells[("cwe", 512)]["all_correct"] == 0
    stdout = capsys.readouterr().out.rstrip().splitlines()
    header = len(stdout) - len(result["summary_by_placement"]) - 1  # the table is the last thing printed
    assert stdout[header].split()[:5] == ["task", "length", "window", "setting", "placement"]
    assert stdout[header].endswith("Wilson 95%") and stdout.index(f"wrote {out}") < header
    assert all(re.search(r"\d+/[12] +\[\d\.\d{3}, \d\.\d{3}\]$", line) for line in stdout[header + 1 :])
    assert not (tmp_path / "r.json.partial.jsonl").exists()


def test_first_index_adds_later_samples_that_render_merges(tok, smollm2_path, tmp_path):
    """A run of samples 0-1 and a later one of 2-3 (--first-index 2) are the same samples as one run of
    0-3: same prompts by index, merged by render_ruler.py; overlapping runs are refused there."""
    import render_ruler

    def run(name, *extra):
        out = tmp_path / name
        with OracleServer(tok) as fake:
            argv = ["--url", fake.url, "--model", smollm2_path, "--lengths", "1024", "--tasks", "niah_single,vt",
                    "--no-progress", "--out", str(out), *extra]
            assert quality_ruler.main(argv) == 0
        return out

    first, later = run("a.json", "--samples", "2"), run("b.json", "--samples", "2", "--first-index", "2")
    whole = run("w.json", "--samples", "4")
    key = lambda r: (r["task"], r["index"], r["prompt_sha256"])  # noqa: E731
    later_records = json.loads(later.read_text())["records"]
    assert sorted({r["index"] for r in later_records}) == [2, 3]
    assert json.loads(later.read_text())["task"]["first_index"] == 2
    merged = render_ruler.load([str(first), str(later)])
    assert sorted(map(key, merged["records"])) == sorted(map(key, json.loads(whole.read_text())["records"]))
    with pytest.raises(SystemExit, match="also in an earlier file"):
        render_ruler.load([str(first), str(whole)])


@pytest.mark.slow
def test_cli_hf_runner_on_a_tiny_model(tok, tmp_path):
    """The HF path end to end: a tiny random Llama with the SmolLM2 tokenizer, two settings whose
    prefills differ; answers are noise, the plumbing is what is checked."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model_dir = tmp_path / "tiny"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "hf.json"
    argv = ["--model", str(model_dir), "--device", "cpu", "--tasks", "niah_single,vt", "--lengths", "1024",
            "--samples", "1", "--settings", "full,sw+sink", "--windows", "256", "--sinks", "8", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert quality_ruler.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["runner"]["runner"] == "hf" and result["runner"]["model_path"] == str(model_dir)
    records = result["records"]
    assert [(r["task"], r["setting"]) for r in records] == [("niah_single", "full"), ("niah_single", "sw+sink"),
                                                            ("vt", "full"), ("vt", "sw+sink")]
    for r in records:
        assert 1 <= r["answer_tokens"] <= task.MAX_NEW_TOKENS[r["task"]] and not r["reused"]
    assert result["settings"]["256"][1]["resolved"]["keep_first"] == 8
    with pytest.raises(SystemExit):  # 4096 is past this model's 2048 positions
        quality_ruler.main([*argv[:-2], "--lengths", "4096"])


FAKE_LAUNCHED = r'''
"""A stand-in for `python -m swaa_sglang.launch_server`: records its flags, answers "0"."""
import json, os, sys
from http.server import ThreadingHTTPServer
from fake_http import JSONHandler  # tests/ is on the launched process's PYTHONPATH

argv = sys.argv[1:]
flag = lambda name: argv[argv.index(name) + 1] if name in argv else None
config = json.load(open(flag("--swaa-config"))) if flag("--swaa-config") else None
with open(os.environ["FAKE_LAUNCHES"], "a") as f:
    f.write(json.dumps({"argv": argv, "config": config, "pid": os.getpid()}) + "\n")

class Handler(JSONHandler):
    def do_GET(self):
        self._json({"data": [{"id": "fake"}]} if self.path == "/v1/models" else {})

    def do_POST(self):
        self._json({"choices": [{"text": " 0"}], "usage": {"completion_tokens": 1}})

ThreadingHTTPServer(("127.0.0.1", int(flag("--port"))), Handler).serve_forever()
'''


@pytest.mark.slow
def test_launch_runner_starts_one_server_per_config(smollm2_path, tmp_path, monkeypatch):
    import socket

    fake = tmp_path / "fake_server.py"
    fake.write_text(FAKE_LAUNCHED)
    launches = tmp_path / "launches.jsonl"
    monkeypatch.setenv("FAKE_LAUNCHES", str(launches))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "launch.json"
    argv = ["--runner", "launch", "--launch-command", f"{sys.executable} {fake}", "--model", smollm2_path,
            "--port", str(port), "--settings", "full,sw+sink+fa+odd", "--windows", "256,512", "--sinks", "16",
            "--tasks", "niah_single,cwe", "--lengths", "1024", "--samples", "2", "--no-progress", "--out", str(out)]
    assert quality_ruler.main(argv) == 0
    started = [json.loads(line) for line in launches.read_text().splitlines()]
    assert len(started) == 3  # full once for both windows, the SWAA setting per window
    assert sorted((s["config"] or {}).get("sliding_window_size", 0) for s in started) == [0, 256, 512]
    for s in started:
        with pytest.raises(ProcessLookupError):  # stopped
            os.kill(s["pid"], 0)
    result = json.loads(out.read_text())
    assert len(result["records"]) == 2 * 2 * 2 * 2  # samples x tasks x windows x settings
    assert {r["score"] for r in result["records"]} == {0.0}
    assert all((out.with_suffix("") / s["log"]).exists() for s in result["runner"]["servers"])


@pytest.mark.slow
@pytest.mark.parametrize("length", [16384, 32768])
def test_default_model_tokenizer_fills_16k_and_32k(qwen25_coder_tokenizer, length):
    corpus = Corpus(qwen25_coder_tokenizer)
    for name in task.TASKS:
        s = task.make_sample(qwen25_coder_tokenizer, corpus, name, length, 0)
        assert s.prompt_budget - task.tolerance(length) <= s.prompt_tokens <= s.prompt_budget
        for n in s.needles:
            assert qwen25_coder_tokenizer.decode(s.input_ids[n.span[0] : n.span[1]]).strip() == n.text
