"""GGUF file -> Hugging Face directory, for the named models of :mod:`swaa_sglang.models`.

Each converter writes ``config.json``, bf16 ``model.safetensors``, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json`` (with the chat template) and ``swaa_provenance.json``
into a directory that must not exist yet, and fails (so nothing gets cached) when the result does
not load back as intended.

Weights: transformers' own GGUF reader dequantizes the tensors (and undoes llama.cpp's q/k row
permutation where the architecture has one). We call it directly (``load_gguf_checkpoint``) rather
than through ``from_pretrained(gguf_file=...)``: the latter requires ``accelerate`` in transformers
5.12 and then marks the model as quantized, which blocks ``save_pretrained``. Same code path for the
tensors, no extra dependency.

Tokenizers: transformers' GGUF tokenizer conversion is wrong for both models, in different ways.
SmolLM2: it adds a BOS, picks the wrong eos and does not split digits, so we build the tokenizer
from the GGUF vocabulary and merges ourselves (byte-level BPE, digits one by one: llama.cpp's
``smollm`` pre-tokenizer). Qwen2.5: its Qwen2 pre-tokenizer is right, but it registers only 3 of the
22 added tokens (``<|fim_prefix|>`` and the others would be split into pieces) and keeps the 271
``[PADnnnnnn]`` fillers that pad the GGUF vocabulary to the embedding size; we drop the fillers and
register all 22 with their GGUF ids.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# llama.cpp token types (LLAMA_TOKEN_TYPE_*) in ``tokenizer.ggml.token_type``.
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5

# Plain ChatML, used only if a GGUF carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SMOLLM2_EOS = "<|im_end|>"  # id 2: ends a chat turn; also the pad token
SMOLLM2_BOS = "<|im_start|>"  # id 1: declared (as in the original model) but never added
SMOLLM2_UNK = "<|endoftext|>"  # id 0
SMOLLM2_CONTEXT = 8192

QWEN25_EOS, QWEN25_EOS_ID = "<|im_end|>", 151645  # ends a chat turn (the instruct model's eos)
QWEN25_PAD, QWEN25_PAD_ID = "<|endoftext|>", 151643  # pad, and the base model's end of text (also "bos")
QWEN25_BPE_TOKENS = 151643  # ids below this are BPE vocabulary; the added tokens follow
QWEN25_CONTEXT = 32768
QWEN25_ADDED_TOKENS = 22  # <|endoftext|> ... <|file_sep|>, ids 151643-151664
# The GGUF's metadata differs from upstream's config.json here (llama.cpp does not store these).
QWEN25_CONFIG = {
    "tie_word_embeddings": True,
    "max_window_layers": 24,
    "rms_norm_eps": 1e-6,  # stored as float32 in the GGUF (9.99999997e-07)
    "bos_token_id": QWEN25_PAD_ID,
    "eos_token_id": QWEN25_EOS_ID,
    "pad_token_id": QWEN25_PAD_ID,
}
# A Q5_0 and a Q8_0 copy of one matrix differ by a few percent; two different matrices by ~140%.
MAX_TIED_COPY_DIFFERENCE = 0.1


# -- the converters ------------------------------------------------------------------
def convert_smollm2(gguf: Path, out: Path, provenance: dict[str, Any]) -> None:
    """SmolLM2-135M-Instruct (Llama, tied embeddings already in the GGUF)."""
    _write_weights(gguf, out, config_fixes={}, tie_to_output=False, generation={})
    tokenizer = smollm2_tokenizer(gguf)
    _write_tokenizer(tokenizer, out)
    _write_provenance(out, gguf, provenance)
    _check_smollm2_tokenizer(out)


def convert_qwen25_coder(gguf: Path, out: Path, provenance: dict[str, Any]) -> None:
    """Qwen2.5-Coder-0.5B-Instruct (Qwen2): embeddings tied to the GGUF's Q8_0 ``output.weight``."""
    _write_weights(
        gguf,
        out,
        config_fixes=QWEN25_CONFIG,
        tie_to_output=True,
        generation={
            "bos_token_id": QWEN25_PAD_ID,
            "eos_token_id": [QWEN25_EOS_ID, QWEN25_PAD_ID],  # as upstream: stop at either
            "pad_token_id": QWEN25_PAD_ID,
        },
    )
    tokenizer = qwen25_tokenizer(gguf)
    _write_tokenizer(tokenizer, out)
    _write_provenance(out, gguf, provenance)
    _check_qwen25_tokenizer(out)


# -- weights ---------------------------------------------------------------------------
def _write_weights(
    gguf: Path, out: Path, config_fixes: dict[str, Any], tie_to_output: bool, generation: dict[str, Any]
) -> None:
    """Dequantize ``gguf`` to bf16 and ``save_pretrained`` it into ``out`` (created here).

    ``tie_to_output``: the GGUF stores the output projection separately; the saved model ties its
    embeddings to that matrix (upstream ties them; the output copy is the more precise one).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    out.mkdir(parents=True)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Defensive: a quantization marker would make loaders treat plain bf16 weights as quantized.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    for key, value in config_fixes.items():
        setattr(config, key, value)
    config.dtype = torch.bfloat16

    # Same steps as from_pretrained(gguf_file=...): a meta-device model names the tensors, transformers dequantizes.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    logger.info("dequantizing %s", gguf.name)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.bfloat16)[
        "tensors"
    ]
    if tie_to_output:
        output = tensors.pop("lm_head.weight", None)
        if output is None:
            raise RuntimeError(f"{gguf}: no output.weight to tie the embeddings to")
        _check_same_matrix(tensors["model.embed_tokens.weight"], output, gguf)
        tensors["model.embed_tokens.weight"] = output
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"GGUF tensors do not match the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    if generation:
        model.generation_config = GenerationConfig(**generation)
    # Only parameters and persistent buffers are saved; the rotary buffers (non-persistent) stay on meta.
    model.save_pretrained(str(out))


def _check_same_matrix(embedding, output, gguf: Path) -> None:
    """Refuse to tie unless the two quantized copies are of one matrix (relative Frobenius distance)."""
    if embedding.shape != output.shape:
        raise RuntimeError(
            f"{gguf}: token_embd {tuple(embedding.shape)} and output {tuple(output.shape)} differ in shape"
        )
    diff_sq = norm_sq = 0.0
    for start in range(0, output.shape[0], 16384):  # in row blocks: float32 copies of the whole matrix cost 1 GB
        e, o = embedding[start : start + 16384].float(), output[start : start + 16384].float()
        diff_sq += float((e - o).square().sum())
        norm_sq += float(o.square().sum())
    relative = (diff_sq / norm_sq) ** 0.5
    logger.info("token_embd vs output.weight: relative difference %.4f", relative)
    if relative > MAX_TIED_COPY_DIFFERENCE:
        raise RuntimeError(
            f"{gguf}: token_embd and output.weight differ by {relative:.3f} (relative), more than "
            f"{MAX_TIED_COPY_DIFFERENCE}; they are not two copies of one matrix, so they cannot be tied"
        )


# -- tokenizers --------------------------------------------------------------------------
def _gguf_fields(gguf: str | os.PathLike) -> dict[str, Any]:
    from gguf import GGUFReader

    return {name: field.contents() for name, field in GGUFReader(str(gguf)).fields.items()}


def smollm2_tokenizer(gguf: str | os.PathLike):
    """SmolLM2's fast tokenizer from the GGUF's vocabulary and merges: no BOS, eos = pad = ``<|im_end|>``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    fields = _gguf_fields(gguf)
    if fields.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(
            f"{gguf}: expected a byte-level BPE ('gpt2') tokenizer; got {fields.get('tokenizer.ggml.model')!r}"
        )
    tokens: list[str] = fields["tokenizer.ggml.tokens"]
    types: list[int] = fields["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    eos_id = fields.get("tokenizer.ggml.eos_token_id")
    if eos_id is None or tokens[eos_id] != SMOLLM2_EOS:
        raise ValueError(f"{gguf}: eos token is {eos_id!r}, expected {SMOLLM2_EOS!r} (this builder is for SmolLM2)")

    tok = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False, byte_fallback=False)
    )
    tok.normalizer = None
    # Digits one by one, then GPT-2's byte-level split: llama.cpp's "smollm" pre-tokenizer.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets only: adds no BOS/EOS
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == TOKEN_CONTROL]
    )

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SMOLLM2_BOS,
        eos_token=SMOLLM2_EOS,
        pad_token=SMOLLM2_EOS,
        unk_token=SMOLLM2_UNK,
        model_max_length=SMOLLM2_CONTEXT,
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
    )
    fast.chat_template = fields.get("tokenizer.chat_template") or CHATML_TEMPLATE
    return fast


def qwen25_tokenizer(gguf: str | os.PathLike):
    """Qwen2.5's fast tokenizer: transformers' Qwen2 conversion without the fillers, with all 22 added tokens."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.ggml import GGUFQwen2Converter

    fields = _gguf_fields(gguf)
    if (fields.get("tokenizer.ggml.model"), fields.get("tokenizer.ggml.pre")) != ("gpt2", "qwen2"):
        raise ValueError(
            f"{gguf}: expected the Qwen2 byte-level BPE tokenizer ('gpt2', 'qwen2'); got "
            f"{(fields.get('tokenizer.ggml.model'), fields.get('tokenizer.ggml.pre'))!r}"
        )
    tokens: list[str] = fields["tokenizer.ggml.tokens"]
    types: list[int] = fields["tokenizer.ggml.token_type"]
    # The fillers sit at the end (ids 151665-151935): dropping them keeps every other id.
    n_real = sum(ty != TOKEN_UNUSED for ty in types)
    if any(ty == TOKEN_UNUSED for ty in types[:n_real]):
        raise ValueError(f"{gguf}: unused (filler) tokens are not all at the end of the vocabulary")
    added = [i for i in range(n_real) if types[i] in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    if len(added) != QWEN25_ADDED_TOKENS or tokens[fields["tokenizer.ggml.eos_token_id"]] != QWEN25_EOS:
        raise ValueError(
            f"{gguf}: {len(added)} added tokens and eos {tokens[fields['tokenizer.ggml.eos_token_id']]!r}; "
            f"expected {QWEN25_ADDED_TOKENS} and {QWEN25_EOS!r} (this builder is for Qwen2.5)"
        )

    tok = GGUFQwen2Converter({"tokens": tokens[:n_real], "merges": fields["tokenizer.ggml.merges"]}).converted()
    # As in upstream's tokenizer.json: control tokens are special (skipped when decoding), <tool_call> and
    # </tool_call> (user-defined) are not. Each is already in the vocabulary, so it keeps its GGUF id.
    control = [i for i in added if types[i] == TOKEN_CONTROL]
    user_defined = [i for i in added if types[i] == TOKEN_USER_DEFINED]
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in control])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user_defined])

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=QWEN25_EOS,
        pad_token=QWEN25_PAD,
        model_max_length=QWEN25_CONTEXT,
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
    )
    fast.chat_template = fields.get("tokenizer.chat_template") or CHATML_TEMPLATE
    return fast


def _write_tokenizer(tokenizer, out: Path) -> None:
    tokenizer.save_pretrained(str(out))
    # transformers 5 writes the template to chat_template.jinja; also put it in tokenizer_config.json,
    # where older loaders look for it.
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    tc["chat_template"] = tokenizer.chat_template
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"  # generic: loads the same in transformers 4 and 5
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_provenance(out: Path, gguf: Path, provenance: dict[str, Any]) -> None:
    import transformers

    record = {
        "source": provenance["source"],
        "gguf": gguf.name,
        "gguf_sha256": provenance["gguf_sha256"],
        "converted_with": f"transformers {transformers.__version__}",
    }
    (out / "swaa_provenance.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


# -- load-back checks ----------------------------------------------------------------------
def _check_smollm2_tokenizer(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    problems = []
    if tok.eos_token_id != 2 or tok.pad_token_id != 2:
        problems.append(f"eos/pad ids {tok.eos_token_id}/{tok.pad_token_id}, expected 2/2")
    ids = tok("12345").input_ids
    if len(ids) != 5:
        problems.append(f"'12345' -> {ids}, expected 5 single-digit tokens (no BOS)")
    _check_round_trip(tok, problems)
    _raise_if(problems, model_dir)


def _check_qwen25_tokenizer(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    problems = []
    if tok.eos_token_id != QWEN25_EOS_ID or tok.pad_token_id != QWEN25_PAD_ID:
        problems.append(
            f"eos/pad ids {tok.eos_token_id}/{tok.pad_token_id}, expected {QWEN25_EOS_ID}/{QWEN25_PAD_ID}"
        )
    if tok("Hello world").input_ids != [9707, 1879]:  # the example in Qwen2's own tokenizer docs
        problems.append(f"'Hello world' -> {tok('Hello world').input_ids}, expected [9707, 1879] (no BOS)")
    if tok("<|fim_prefix|>").input_ids != [151659]:
        problems.append(f"'<|fim_prefix|>' -> {tok('<|fim_prefix|>').input_ids}, expected one added token 151659")
    if len(tok) != QWEN25_BPE_TOKENS + QWEN25_ADDED_TOKENS:
        problems.append(f"{len(tok)} tokens, expected {QWEN25_BPE_TOKENS + QWEN25_ADDED_TOKENS} (no [PAD] fillers)")
    _check_round_trip(tok, problems)
    _raise_if(problems, model_dir)


def _check_round_trip(tok, problems: list[str]) -> None:
    if tok.decode(tok("Hi 42, café!").input_ids) != "Hi 42, café!":
        problems.append("text does not round-trip")


def _raise_if(problems: list[str], model_dir: Path) -> None:
    if problems:
        raise RuntimeError(f"tokenizer written to {model_dir} is wrong: {'; '.join(problems)}")
