"""SWAA in Hugging Face transformers: the reference model implementation (CPU or GPU, plain torch).

Usage::

    from swaa_sglang import SWAAConfig
    from swaa_sglang.hf import load_model
    model = load_model(swaa=SWAAConfig(sliding_window_size=2048, keep_first=100, force_fa_decode=True))
    model.generate(...)

or, for any Llama / Qwen2 / Qwen3 / Qwen3-MoE checkpoint::

    register()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="swaa")
    attach(model, SWAAConfig(...))

How it plugs into transformers 5.12 (read from its source):

* Attention modules call ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`` as
  ``fn(module, query, key, value, attention_mask, scaling=..., dropout=..., **kwargs)`` with
  query ``[B, Hq, q, D]`` and key/value ``[B, Hkv, kv, D]`` *after* the cache update, and expect
  ``([B, q, Hq, D], weights)`` back. ``kwargs`` carry the model's ``position_ids`` (the decoder
  layer forwards them) and any extra keyword given to ``model(...)``/``generate(...)``.
  There is no ``cache_position`` any more (removed in transformers 5).
* Masks: the model builds one mask per forward with ``ALL_MASK_ATTENTION_FUNCTIONS[impl]``.
  For a name with no registered mask function it passes ``attention_mask=None`` to every
  layer, dropping the padding mask. So :func:`register` also registers a mask function:
  ``sdpa_mask`` with the "skip when causal" shortcut disabled, which yields a boolean
  ``[B, 1, q, kv]`` mask (causal in cache slots, padding, packed sequences) on every forward.
  The attention function ANDs it with :func:`swaa_sglang.reference.visibility_mask`, per layer.
* Positions: query positions are ``position_ids`` (absolute within each sequence; ``generate``
  derives them from the attention mask, so left padding is accounted for). Keys of the current
  chunk take the same positions; cached keys count back from the chunk's first query. This
  needs a cache whose keys end with the current queries (``DynamicCache``, the default); a
  ``StaticCache`` is detected through the mask and rejected.
* Decode rows ("generated tokens", SWAA.md): a forward with an empty cache is a prompt, and its
  length (in cache slots, padding included) is recorded for the model; a later query at a slot
  at or beyond it is a generated token. Never "q_len == 1". Override it with the keyword
  ``swaa_prompt_len=N`` (or one value per row) on ``model(...)``/``generate(...)``, or with the
  :func:`prompt_length` context manager, given as absolute positions: queries at positions
  ``>= N`` are decode rows. Needed for chunked prefill, multi-turn cache reuse, and
  ``use_cache=False`` generation (where every step looks like a fresh prompt).

Attention is computed like transformers' ``eager_attention_forward`` (same ops, in at least
float32) so that a config that masks nothing reproduces the stock eager model bit for bit. Its
scores are ``[q, kv]`` per head; for long prompts (batch 1, no padding) the "swaa_blockwise"
implementation (:func:`blockwise_attention_forward`, selected with :func:`set_attention`)
computes the same rule over query blocks and only the keys each block can see.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, Union

import torch
from torch import nn

from .cli import add_swaa_args, config_from_args
from .config import SWAAConfig
from .model_support import describe_native_window, native_sliding_window
from .reference import visibility_mask

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "swaa"
BLOCKWISE_IMPLEMENTATION = "swaa_blockwise"
PROMPT_LEN_KWARG = "swaa_prompt_len"

# Above this many bytes of float32 scores per forward, queries are processed in chunks.
_SCORE_BUDGET_BYTES = 1 << 30
# Queries per block of the blockwise implementation: each block reads only the keys it can see.
BLOCKWISE_QUERY_BLOCK = 256

PromptLen = Union[int, Sequence[int], torch.Tensor]


@dataclass
class _SWAAState:
    """Per-model SWAA state, shared by all its attention modules."""

    config: SWAAConfig  # resolved against the model's layer count
    prompt_slots: int | None = None  # cache slots of the last prompt prefill (padding included)
    prompt_len_override: PromptLen | None = None  # set by prompt_length(); absolute positions


# -- registration -------------------------------------------------------------------
def register() -> None:
    """Register the "swaa" attention and mask functions and the "swaa_blockwise" attention function with
    transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, swaa_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _swaa_mask)
    # no mask function for the blockwise name: transformers then passes attention_mask=None, which is
    # what it expects (one unpadded sequence)
    AttentionInterface.register(BLOCKWISE_IMPLEMENTATION, blockwise_attention_forward)


def _swaa_mask(**kwargs: Any) -> torch.Tensor:
    """The model-wide base mask: boolean ``[B, 1, q, kv]``, never skipped (see the module docstring)."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(**kwargs)


def _text_config(model: nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def attach(model: nn.Module, config: SWAAConfig) -> nn.Module:
    """Run ``model`` with SWAA ``config``: validate, store it on the attention modules, switch the implementation.

    Calling it again replaces the config (and forgets the recorded prompt length). Returns ``model``.
    """
    if not isinstance(config, SWAAConfig):
        raise TypeError(f"attach: expected a SWAAConfig; got {type(config).__name__}")
    register()
    text_config = _text_config(model)
    num_layers = text_config.num_hidden_layers
    config.validate(num_layers, context_length=getattr(text_config, "max_position_embeddings", None))
    _reject_native_sliding(text_config)
    state = _SWAAState(config.resolved(num_layers))

    layers = set()
    for module in model.modules():
        if isinstance(getattr(module, "layer_idx", None), int) and hasattr(module, "num_key_value_groups"):
            module._swaa_state = state
            layers.add(module.layer_idx)
    if layers != set(range(num_layers)):
        raise ValueError(
            f"attach: found attention modules for layers {sorted(layers)}, expected 0..{num_layers - 1}; "
            f"{type(model).__name__} is not a supported architecture (Llama, Qwen2, Qwen3, Qwen3-MoE)"
        )
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        if model.config._attn_implementation != ATTN_IMPLEMENTATION:
            raise ValueError(f"attach: {type(model).__name__} cannot switch its attention implementation")
    logger.info("SWAA attached: %s", state.config.to_json())
    return model


def _reject_native_sliding(text_config: Any) -> None:
    # SWAA adapts full-attention models; the same check as at server launch (model_support).
    native = native_sliding_window(text_config)
    if native is not None:
        raise ValueError(
            f"attach: this model declares a native sliding window ({describe_native_window(*native, text_config)}); "
            "SWAA adapts full-attention models"
        )


def swaa_config_of(model: nn.Module) -> SWAAConfig | None:
    """The (resolved) SWAA config attached to ``model``, or None."""
    for module in model.modules():
        state = getattr(module, "_swaa_state", None)
        if state is not None:
            return state.config
    return None


def _state_of(model: nn.Module) -> _SWAAState:
    for module in model.modules():
        state = getattr(module, "_swaa_state", None)
        if state is not None:
            return state
    raise ValueError("no SWAA config attached to this model; call swaa_sglang.hf.attach(model, config)")


@contextlib.contextmanager
def prompt_length(model: nn.Module, length: PromptLen) -> Iterator[None]:
    """Within the block, queries at absolute positions ``>= length`` are decode rows (one value, or one per row)."""
    state = _state_of(model)
    previous = state.prompt_len_override
    state.prompt_len_override = length
    try:
        yield
    finally:
        state.prompt_len_override = previous


def load_model(
    path: str | None = None,
    swaa: SWAAConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Load a causal LM with SWAA attached (``path`` None: the embedded SmolLM2, see :mod:`swaa_sglang.models`).

    ``swaa`` None means ``SWAAConfig()`` (full attention). ``device`` None: CUDA if available, else CPU.
    """
    from transformers import AutoModelForCausalLM

    if path is None:
        from .models import default_model_path

        path = default_model_path()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    register()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION)
    model.to(device).eval()
    return attach(model, swaa if swaa is not None else SWAAConfig())


# -- the attention function -----------------------------------------------------------
def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, S, D] -> [B, Hkv * n_rep, S, D], as transformers' repeat_kv (same memory layout, same results)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def _base_mask(attention_mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int) -> torch.Tensor | None:
    """The mask transformers passed, as bool ``[B, 1, q, kv]`` (True = may attend)."""
    if attention_mask is None:
        return None
    mask = attention_mask
    if mask.dim() != 4:
        raise ValueError(f"swaa attention: expected a 4D attention mask; got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        # A user-supplied additive mask: 0 = attend, a huge negative = masked. Anything else would be
        # an attention bias, which SWAA's boolean rule cannot carry.
        masked = mask <= torch.finfo(mask.dtype).min / 2
        if not bool(((mask == 0) | masked).all()):
            raise ValueError("swaa attention: a float attention mask may hold only 0 and -inf (or dtype min)")
        mask = ~masked
    if mask.shape[-1] != kv_len or mask.shape[-2] != q_len:
        raise ValueError(
            f"swaa attention: mask shape {tuple(mask.shape)} does not match queries {q_len} x keys {kv_len}"
        )
    return mask.expand(batch, 1, q_len, kv_len)


def _decode_rows(
    state: _SWAAState, q_pos: torch.Tensor, past: int, q_len: int, override: PromptLen | None
) -> torch.Tensor:
    """Bool ``[B, q]``: which queries are generated tokens (see the module docstring)."""
    batch = q_pos.shape[0]
    if past == 0:
        state.prompt_slots = q_len  # a fresh sequence; every layer records the same value
    if override is None:
        override = state.prompt_len_override
    if override is not None:
        limit = torch.as_tensor(override, device=q_pos.device).reshape(-1, 1)
        if limit.shape[0] not in (1, batch):
            raise ValueError(f"{PROMPT_LEN_KWARG}: expected one value or {batch} (one per row); got {limit.shape[0]}")
        return q_pos >= limit
    if past == 0:
        return torch.zeros(batch, q_len, dtype=torch.bool, device=q_pos.device)
    if state.prompt_slots is None:
        raise ValueError(
            "swaa attention: the cache was filled without SWAA seeing the prompt; pass "
            f"{PROMPT_LEN_KWARG}=<prompt length> or use swaa_sglang.hf.prompt_length(model, n)"
        )
    slots = torch.arange(past, past + q_len, device=q_pos.device)
    return (slots >= state.prompt_slots).unsqueeze(0).expand(batch, q_len)


def swaa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The "swaa" attention implementation (signature fixed by transformers' AttentionInterface)."""
    state: _SWAAState | None = getattr(module, "_swaa_state", None)
    if state is None:
        raise ValueError(
            'attn_implementation="swaa" needs a SWAA config: call swaa_sglang.hf.attach(model, config) '
            "(or use swaa_sglang.hf.load_model)"
        )
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("swaa attention: logit soft-capping is not supported")
    batch, num_heads, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    past = kv_len - q_len
    if past < 0:
        raise ValueError(f"swaa attention: {q_len} queries but only {kv_len} keys")
    layer = module.layer_idx

    base = _base_mask(attention_mask, batch, q_len, kv_len)
    if base is not None:
        # Query a must sit at slot past + a: every query that sees anything (padding sees nothing)
        # sees its own key there. Otherwise the keys are not "cache, then this chunk" (e.g. a
        # StaticCache), and key positions cannot be derived.
        a = torch.arange(q_len, device=base.device)
        own = base[:, 0, a, past + a]
        if not bool((own | ~base[:, 0].any(-1)).all()):
            raise ValueError("swaa attention: keys do not end with the current queries; use a DynamicCache")

    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        q_pos = torch.arange(past, kv_len, device=query.device).expand(batch, q_len)
    else:
        q_pos = position_ids.to(query.device).long().reshape(-1, q_len).expand(batch, q_len)
    # Keys: this chunk's keys are its queries; cached keys count back from the chunk's first query.
    k_pos = torch.cat([q_pos[:, :1] - torch.arange(past, 0, -1, device=query.device), q_pos], dim=1)
    decode = _decode_rows(state, q_pos, past, q_len, kwargs.get(PROMPT_LEN_KWARG))

    mask = torch.stack(
        [visibility_mask(state.config, layer, q_pos[b], k_pos[b], decode[b]) for b in range(batch)]
    ).unsqueeze(1)  # [B, 1, q, kv]
    if base is not None:
        mask = mask & base

    # Same ops as transformers' eager_attention_forward, in at least float32.
    dtype = torch.promote_types(query.dtype, torch.float32)
    scaling = head_dim**-0.5 if scaling is None else scaling
    groups = num_heads // key.shape[1]
    k = _repeat_kv(key.to(dtype), groups)
    v = _repeat_kv(value.to(dtype), groups)
    q = query.to(dtype)
    min_value = torch.finfo(dtype).min  # finite, like eager's mask: a row that sees nothing stays NaN-free
    step = max(1, _SCORE_BUDGET_BYTES // max(1, batch * num_heads * kv_len * 4))
    outputs = []
    for start in range(0, q_len, step):  # one pass unless the scores would be huge
        end = min(q_len, start + step)
        scores = torch.matmul(q[:, :, start:end], k.transpose(2, 3)) * scaling
        scores = scores.masked_fill(~mask[:, :, start:end], min_value)
        probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        probs = nn.functional.dropout(probs, p=dropout, training=module.training)
        outputs.append(torch.matmul(probs, v))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return out.transpose(1, 2).contiguous().to(query.dtype), None


def blockwise_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The "swaa_blockwise" attention implementation: the same rule as :func:`swaa_attention_forward`, in
    memory and time that grow with the keys each query block can see instead of the whole sequence.

    For long prompts on CPU (the quality harness runs 4K-16K prompts through it). Batch 1 with no
    padding only: key positions are cache slots, so ``position_ids`` are not read. Queries go in blocks
    of :data:`BLOCKWISE_QUERY_BLOCK`; a block reads the sinks ``[0, min(k, lo))`` and the keys
    ``[lo, end)``, ``lo`` the window start of its first query (0 on a full layer, and on a sliding
    layer with FA decode when the block holds a decode row); the rule
    (:func:`swaa_sglang.reference.visibility_mask`) is then applied as a boolean mask over those keys
    and torch's ``scaled_dot_product_attention`` does the rest, in at least float32. Decode rows are
    decided as in :func:`swaa_attention_forward` (``swaa_prompt_len`` or the recorded prompt).
    Switch a model to it with :func:`set_attention`.
    """
    import torch.nn.functional as F

    state: _SWAAState | None = getattr(module, "_swaa_state", None)
    if state is None:
        raise ValueError(f"{BLOCKWISE_IMPLEMENTATION}: attach a SWAA config first (swaa_sglang.hf.attach)")
    batch, num_heads, q_len, head_dim = query.shape
    if batch != 1:
        raise ValueError(f"{BLOCKWISE_IMPLEMENTATION}: batch size 1 only; got {batch}")
    if attention_mask is not None:
        raise ValueError(f"{BLOCKWISE_IMPLEMENTATION}: expects no attention mask (one unpadded sequence)")
    kv_len = key.shape[2]
    past = kv_len - q_len
    if past < 0:
        raise ValueError(f"{BLOCKWISE_IMPLEMENTATION}: {q_len} queries but only {kv_len} keys")
    config, layer = state.config, module.layer_idx
    device = query.device
    q_pos = torch.arange(past, kv_len, device=device)
    decode = _decode_rows(state, q_pos.unsqueeze(0), past, q_len, kwargs.get(PROMPT_LEN_KWARG))[0]
    scaling = head_dim**-0.5 if scaling is None else scaling
    dtype = torch.promote_types(query.dtype, torch.float32)
    q, k, v = query.to(dtype), key.to(dtype), value.to(dtype)
    gqa = num_heads != key.shape[1]
    dropout = dropout if module.training else 0.0

    if not config.is_sliding(layer) and past == 0:  # a full layer's prompt: plain causal attention
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=gqa)
        return out.transpose(1, 2).contiguous().to(query.dtype), None

    window, sinks = config.sliding_window_size, config.keep_first
    outputs = []
    for start in range(0, q_len, BLOCKWISE_QUERY_BLOCK):
        end = min(q_len, start + BLOCKWISE_QUERY_BLOCK)
        block_decode = decode[start:end]
        sees_all = not config.is_sliding(layer) or (config.uses_fa_decode(layer) and bool(block_decode.any()))
        lo = 0 if sees_all else max(0, past + start - window + 1)
        keys = torch.arange(lo, past + end, device=device)  # causal candidates from the window start on
        if min(sinks, lo) > 0:
            keys = torch.cat([torch.arange(0, min(sinks, lo), device=device), keys])
        mask = visibility_mask(config, layer, q_pos[start:end], keys, block_decode)
        outputs.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, keys], v[:, :, keys], attn_mask=mask,
                                                      scale=scaling, dropout_p=dropout, enable_gqa=gqa))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return out.transpose(1, 2).contiguous().to(query.dtype), None


def set_attention(model: nn.Module, implementation: str) -> nn.Module:
    """Switch a model with a SWAA config attached between the two SWAA implementations:
    ``"swaa"`` (:func:`swaa_attention_forward`, exact like transformers' eager attention, any batch)
    or ``"swaa_blockwise"`` (:func:`blockwise_attention_forward`, bounded memory, batch 1).

    :func:`attach` selects ``"swaa"``; call this after it. Returns ``model``.
    """
    allowed = (ATTN_IMPLEMENTATION, BLOCKWISE_IMPLEMENTATION)
    if implementation not in allowed:
        raise ValueError(f"implementation: {implementation!r}; allowed: {', '.join(allowed)}")
    _state_of(model)  # a config must be attached first
    register()
    model.set_attn_implementation(implementation)
    return model


# -- CLI -------------------------------------------------------------------------------
def build_config(args: argparse.Namespace) -> SWAAConfig:
    """The config the reference CLI runs: its ``--swaa-*`` flags, or full attention without any."""
    config = config_from_args(args)
    return SWAAConfig() if config is None else config


def generate_text(
    model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int = 128, system: str | None = None
) -> str:
    """Greedy chat completion of ``prompt`` (the tokenizer's chat template), decoded without special tokens."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def build_parser() -> argparse.ArgumentParser:
    """``python -m swaa_sglang.hf``: the ``--swaa-*`` flags of the server (no window eviction), plus the prompt."""
    parser = argparse.ArgumentParser(
        prog="python -m swaa_sglang.hf",
        description="Greedy chat generation with SWAA in Hugging Face transformers (the reference implementation). "
        "Without --swaa-* flags the model runs with full attention.",
    )
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--system", help="optional system message")
    parser.add_argument("--model-path", help="a Llama/Qwen2/Qwen3/Qwen3-MoE directory (default: embedded SmolLM2-135M)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="length of the answer (default 128)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="weights and activations (default float32; attention is computed in at least float32)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    add_swaa_args(parser, eviction=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = build_config(args)
    except ValueError as e:
        parser.error(str(e))

    from transformers import AutoTokenizer

    from .models import default_model_path

    path = args.model_path or default_model_path()
    model = load_model(path, swaa=config, dtype=getattr(torch, args.dtype), device=args.device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    print(f"# SWAA {swaa_config_of(model).to_json()}", file=sys.stderr)
    print(generate_text(model, tokenizer, args.prompt, args.max_new_tokens, args.system))
    return 0


if __name__ == "__main__":
    sys.exit(main())
