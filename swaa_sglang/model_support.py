"""Which models SWAA can adapt, decided from the HF config alone (no weights, no GPU, no SGLang import).

SWAA turns a model pretrained with full attention into a sliding-window one. A model that
already declares an active sliding (or chunked local) window was trained with it, and SWAA would
silently replace that window with its own, so it is refused; so are MLA models (latent KV, which
the backend does not read) and encoder-decoder models. :func:`read_hf_config` reads the config
the way SGLang does (``json_model_override_args`` applied, the text sub-config of a multimodal
wrapper); :func:`check_model_config` refuses or validates a :class:`SWAAConfig` against it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from swaa_sglang.config import SWAAConfig

# Layer types (transformers' ALLOWED_LAYER_TYPES) whose attention only reaches a local span of keys.
LOCAL_LAYER_TYPES = ("sliding_attention", "chunked_attention")

SUPPORTED_HELP = (
    "allowed: full-attention decoder-only models whose config declares no active sliding window "
    "(Llama, Qwen2/Qwen2.5 and Qwen3 with use_sliding_window false, Qwen3-MoE, Mistral with sliding_window null)"
)

# How a family switches its window on, read from transformers' configuration_*.py / modeling_*.py
# and SGLang's model files. "flag": use_sliding_window gates sliding_window. "window": a non-null
# sliding_window windows the model whatever layer_types says. Families not listed follow the
# generic rule: a use_sliding_window flag if the config has one, else layer_types if present,
# else a non-null sliding_window (or attention_chunk_size).
_WINDOW_SWITCH: dict[str, str] = {
    # Qwen2/Qwen2.5, Qwen3, Qwen3-MoE, Qwen2-MoE: __post_init__ sets sliding_window to None unless
    # use_sliding_window is true; published configs carry sliding_window and max_window_layers with
    # the flag off, and those models are full attention.
    "qwen2": "flag",
    "qwen3": "flag",
    "qwen3_moe": "flag",
    "qwen2_moe": "flag",
    # SmolLM3: a layer slides only where use_sliding_window is true and layer_types says sliding.
    "smollm3": "flag",
    # Mistral (v0.1: 4096), Mixtral, Phi-3 (mini-4k: 2047), PhiMoE, Starcoder2: the attention and the
    # mask window every layer whenever sliding_window is not null; layer_types is ignored (Mistral
    # only warns about it).
    "mistral": "window",
    "mixtral": "window",
    "phi3": "window",
    "phimoe": "window",
    "starcoder2": "window",
    # Gemma 2: SGLang's model windows every even layer whenever the config has sliding_window
    # (transformers: the alternating layer_types its __post_init__ derives); layer_types is not read.
    "gemma2": "window",
    # DeepSeek-V4: every layer's local branch attends within sliding_window (its layer_types name
    # the compressed branches, not the window).
    "deepseek_v4": "window",
    # Gemma 3 (sliding_window_pattern -> layer_types, 5 of 6 layers local), gpt-oss (alternating),
    # Cohere2, Ministral, Olmo3, Exaone4, Llama 4 text ("chunked_attention"): the generic rule, which
    # reads the layer_types their __post_init__ derives, or sliding_window when a raw config lacks it.
}

# Encoder-decoder architectures SGLang serves without the config's is_encoder_decoder flag set.
_ENCODER_DECODER_ARCHS = ("MllamaForConditionalGeneration", "WhisperForConditionalGeneration",
                          "MossVLForConditionalGeneration")

# Keys SGLang reads the context length from, first found wins (its get_context_length).
_CONTEXT_LENGTH_KEYS = ("max_sequence_length", "seq_length", "max_seq_len", "model_max_length",
                        "max_position_embeddings")


def _get(config: Any, key: str, default: Any = None) -> Any:
    """A field of a parsed config or of a raw config.json dict."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def text_config_of(hf_config: Any) -> Any:
    """The sub-config that describes the language model, as SGLang picks it; the config itself for text models.

    Priority: ``thinker_config`` (its ``text_config`` if any) > ``llm_config`` > ``language_config``
    > ``text_config``; ``Llava*ForCausalLM`` keeps the top level. A dict-valued sub-config is
    returned as it is (a Mapping works everywhere in this module).
    """
    archs = _get(hf_config, "architectures") or []
    if archs and archs[0].startswith("Llava") and archs[0].endswith("ForCausalLM"):
        return hf_config
    thinker = _get(hf_config, "thinker_config")
    if thinker is not None:
        return _get(thinker, "text_config") or thinker
    for name in ("llm_config", "language_config", "text_config"):
        sub = _get(hf_config, name)
        if sub is not None:
            return sub
    return hf_config


def _architecture(hf_config: Any, text_config: Any) -> str:
    archs = _get(hf_config, "architectures") or _get(text_config, "architectures") or []
    return archs[0] if archs else str(_get(text_config, "model_type") or "this model")


def parse_override_json(json_model_override_args: str | None) -> dict[str, Any]:
    """SGLang's ``json_model_override_args`` string as a dict (empty when unset); a ValueError names the field."""
    if not json_model_override_args:
        return {}
    try:
        data = json.loads(json_model_override_args)
    except json.JSONDecodeError as e:
        raise ValueError(f"json_model_override_args: invalid JSON ({e}); allowed: a JSON object") from None
    if not isinstance(data, dict):
        raise ValueError(f"json_model_override_args: expected a JSON object; got {json_model_override_args!r}")
    return data


class ModelConfigUnreadable(ValueError):
    """The model's HF config cannot be read here (no config.json, a remote URL SGLang pulls itself).

    The message names ``model_path``. A launcher may refuse on it, or leave the model check to
    the worker, which runs it on the config SGLang parsed.
    """


def read_hf_config(model_path: str, json_model_override_args: str | None = None, *,
                   trust_remote_code: bool = False, revision: str | None = None) -> Any:
    """The language model's HF config as SGLang sees it: ``AutoConfig`` for a local directory, a
    ``.gguf`` file or a hub id, with ``json_model_override_args`` applied to the top-level config
    (a dict value updates a sub-config in place, anything else is set), then the text sub-config
    of a multimodal wrapper (given the wrapper's ``architectures`` and ``is_encoder_decoder``).

    A config.json that ``AutoConfig`` cannot parse (a model type registered only inside SGLang)
    is returned as its dict, overrides applied; every function here reads both. Raises
    :class:`ModelConfigUnreadable` naming ``model_path`` when there is no config to read here,
    and ValueError naming ``json_model_override_args`` when the overrides are not a JSON object.
    """
    from transformers import AutoConfig, PretrainedConfig

    overrides = parse_override_json(json_model_override_args)
    if "://" in model_path:
        raise ModelConfigUnreadable(f"model_path: {model_path!r} is a remote URL that SGLang fetches itself; "
                                    "allowed here: a model directory with config.json, a .gguf file or a hub id")
    source, kwargs = model_path, {}
    if os.path.isfile(model_path) and model_path.endswith(".gguf"):
        source, kwargs = os.path.dirname(model_path) or ".", {"gguf_file": os.path.basename(model_path)}
    config: Any
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision, **kwargs)
    except (OSError, ValueError, KeyError) as auto_error:
        try:
            config, _ = PretrainedConfig.get_config_dict(source, revision=revision, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelConfigUnreadable(
                f"model_path: cannot read the HF config of {model_path!r} ({e}); allowed: a model directory "
                "with config.json, a .gguf file, or a Hugging Face hub id"
            ) from None
        if not config.get("model_type") and not config.get("architectures"):
            raise ModelConfigUnreadable(f"model_path: cannot read the HF config of {model_path!r} ({auto_error}); "
                                        "allowed: a config.json with a model_type or architectures") from None
    for key, value in overrides.items():
        current = _get(config, key)
        if isinstance(value, dict) and isinstance(current, PretrainedConfig):
            current.update(value)
        elif isinstance(value, dict) and isinstance(current, Mapping):
            _set(config, key, {**current, **value})
        else:
            _set(config, key, value)
    text = text_config_of(config)
    if text is not config:
        if isinstance(text, Mapping):
            text = dict(text)
        if not _get(text, "architectures"):
            _set(text, "architectures", _get(config, "architectures"))
        if _get(config, "is_encoder_decoder"):
            _set(text, "is_encoder_decoder", True)
    return text


def _set(config: Any, key: str, value: Any) -> None:
    if isinstance(config, dict):
        config[key] = value
    else:
        setattr(config, key, value)


def derived_context_length(hf_config: Any) -> int:
    """The context length SGLang derives from a config when ``--context-length`` is not given:
    the first of its context keys, times the RoPE scaling factor unless the scaling already names
    an ``original_max_position_embeddings`` or is Llama 3's; 2048 when no key is set."""
    text = text_config_of(hf_config)
    # a parsed transformers 5 config answers rope_scaling with rope_parameters; a raw one may have either
    scaling = _get(text, "rope_scaling") or _get(text, "rope_parameters")
    factor = 1
    if isinstance(scaling, Mapping) and scaling:
        factor = scaling.get("factor") or 1
        if "original_max_position_embeddings" in scaling or scaling.get("rope_type") == "llama3":
            factor = 1
    for key in _CONTEXT_LENGTH_KEYS:
        value = _get(text, key)
        if value is not None:
            return int(factor * value)
    return 2048


def native_sliding_window(hf_config: Any) -> tuple[str, object] | None:
    """The config field and value that declare an ACTIVE native sliding or local window, or None.

    ``hf_config`` is a parsed HF config, its text sub-config, or a raw config.json dict. Where
    ``sliding_window`` alone switches the window, one at least as long as the model's context
    never drops a key and counts as off (the Phi-3 128K configs declare 262144). On in every
    family: ``use_sliding_window: true`` with a window set, and a ``layer_types`` list with a
    sliding or chunked layer.
    """
    text = text_config_of(hf_config)
    model_type = str(_get(text, "model_type") or "")
    has_flag = ("use_sliding_window" in text) if isinstance(text, Mapping) else hasattr(text, "use_sliding_window")
    switch = _WINDOW_SWITCH.get(model_type, "flag" if has_flag else "generic")
    window = _get(text, "sliding_window")
    context = derived_context_length(text)

    def drops_keys(span: Any) -> bool:
        return isinstance(span, int) and not isinstance(span, bool) and span < context

    if switch == "flag":
        if _get(text, "use_sliding_window") and window is not None:
            return "use_sliding_window", True
    elif switch == "window" and drops_keys(window):
        return "sliding_window", window
    layer_types = _get(text, "layer_types")
    if layer_types and any(t in LOCAL_LAYER_TYPES for t in layer_types):
        return "layer_types", list(layer_types)
    if switch == "generic" and layer_types is None:
        # no per-layer list: a raw Gemma 3 / gpt-oss config.json, or an unknown family whose
        # window applies to every layer
        if drops_keys(window):
            return "sliding_window", window
        chunk = _get(text, "attention_chunk_size")
        if drops_keys(chunk):
            return "attention_chunk_size", chunk
    return None


def describe_native_window(field: str, value: object, hf_config: Any) -> str:
    """``field=value`` for the refusal message; a layer list is summarized by its local layers."""
    text = text_config_of(hf_config)
    if field == "layer_types" and isinstance(value, list):
        counts = {t: value.count(t) for t in LOCAL_LAYER_TYPES if t in value}
        shown = ", ".join(f"{n} of {len(value)} layers '{t}'" for t, n in counts.items())
        described = f"layer_types with {shown}"
    else:
        described = f"{field}={value!r}"
    window = _get(text, "sliding_window")
    if field != "sliding_window" and window is not None:
        described += f", sliding_window={window!r}"
    return described


def _uses_mla(text_config: Any) -> bool:
    # DeepSeek-V2/V3, Kimi, MiniCPM3, GLM-4-MoE-Lite, ...: a latent KV of kv_lora_rank per token
    # (DeepSeek-VL2 may turn it off with use_mla false).
    return _get(text_config, "kv_lora_rank") is not None and _get(text_config, "use_mla", True) is not False


def num_layers_of(hf_config: Any) -> int:
    """The language model's layer count (``num_hidden_layers`` of the text config); ValueError naming it."""
    text = text_config_of(hf_config)
    num_layers = _get(text, "num_hidden_layers")
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ValueError(f"model: {_architecture(hf_config, text)} config has no usable num_hidden_layers (got "
                         f"{num_layers!r}); allowed: a decoder config with num_hidden_layers >= 1")
    return num_layers


def check_model_config(config: SWAAConfig, hf_config: Any, context_length: int | None = None) -> SWAAConfig:
    """Refuse models SWAA cannot adapt, then validate ``config`` against the model; returns it.

    ``hf_config``: the model's HF config or its text sub-config (``read_hf_config``'s result,
    SGLang's ``ModelConfig.hf_config``), or a raw config.json dict. ``context_length``: the
    server's context length when known (``--context-length`` or SGLang's ``ModelConfig.context_len``);
    else derived from the config as SGLang does. Raises ValueError whose message starts with
    ``model:`` (or the SWAA field that does not fit the model).
    """
    text = text_config_of(hf_config)
    architecture = _architecture(hf_config, text)
    native = native_sliding_window(hf_config)
    if native is not None:
        field, value = native
        raise ValueError(
            f"model: {architecture} declares a native sliding window ({describe_native_window(field, value, text)}) "
            f"in its config; SWAA adapts full-attention models only; {SUPPORTED_HELP}"
        )
    if _uses_mla(text):
        raise ValueError(f"model: {architecture} uses MLA attention (DeepSeek-style latent KV, kv_lora_rank="
                         f"{_get(text, 'kv_lora_rank')}), which SWAA does not support; allowed: models with standard "
                         "multi-head or grouped-query attention")
    if (_get(hf_config, "is_encoder_decoder") or _get(text, "is_encoder_decoder")
            or architecture in _ENCODER_DECODER_ARCHS):
        raise ValueError(f"model: {architecture} is an encoder-decoder model, which SWAA does not support; "
                         "allowed: decoder-only models")
    num_layers = num_layers_of(hf_config)
    context = context_length if context_length is not None else derived_context_length(text)
    return config.validate(num_layers, context_length=context)
