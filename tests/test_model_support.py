"""Which models SWAA accepts, decided from the HF config before any weights load (swaa_sglang.model_support).

Configs are the published config.json of each model (trimmed of fields that do not bear on
attention: quantization, remote-code maps), written to a temporary directory and read back
through ``read_hf_config`` as SGLang would read them; the repo's own benchmark configs are read
from benchmarks/models/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from swaa_sglang import SWAAConfig
from swaa_sglang.model_support import (
    ModelConfigUnreadable,
    check_model_config,
    derived_context_length,
    native_sliding_window,
    read_hf_config,
)

ROOT = Path(__file__).resolve().parents[1]
BENCH_MODELS = sorted(p.parent for p in (ROOT / "benchmarks" / "models").glob("*/config.json"))
SWAA = SWAAConfig(sliding_window_size=2048, keep_first=100)

GEMMA2_2B = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 107],
    "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
    "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
    "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "torch_dtype": "float32",
    "use_cache": True, "vocab_size": 256000,
}
GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
    "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 262144,
}
GEMMA3_4B = {  # the multimodal wrapper: the window sits in text_config
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
    "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "torch_dtype": "bfloat16",
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14, "vision_use_head": False},
}
MISTRAL_V01 = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
    "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 32000,
}
MISTRAL_V03 = {**MISTRAL_V01, "rope_theta": 1000000.0, "sliding_window": None, "vocab_size": 32768}
PHI3_MINI_4K = {
    "architectures": ["Phi3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
    "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 4096, "model_type": "phi3", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "original_max_position_embeddings": 4096,
    "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
    "sliding_window": 2047, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 32064,
}
# Phi-3 128K: a declared window (262144) longer than the context (131072) never drops a key
PHI3_MINI_128K = {
    **PHI3_MINI_4K, "max_position_embeddings": 131072, "sliding_window": 262144,
    "rope_scaling": {"type": "longrope", "long_factor": [1.0] * 48, "short_factor": [1.0] * 48},
}
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0, "eos_token_id": 200002,
    "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880, "initial_context_length": 4096,
    "initializer_range": 0.02, "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12, "max_position_embeddings": 131072,
    "model_type": "gpt_oss", "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
    "num_key_value_heads": 8, "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                     "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
    "tie_word_embeddings": False, "use_cache": True, "vocab_size": 201088,
}
QWEN2_7B_INSTRUCT = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 152064,
}
QWEN25_7B_INSTRUCT = {**QWEN2_7B_INSTRUCT, "max_window_layers": 28, "sliding_window": 131072}
QWEN25_05B = {  # Qwen2.5-0.5B-Instruct: window and max_window_layers declared, flag off
    **QWEN2_7B_INSTRUCT, "hidden_size": 896, "intermediate_size": 4864, "max_window_layers": 21,
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "sliding_window": 32768,
    "tie_word_embeddings": True, "vocab_size": 151936,
}
# A Qwen2 config with its window switched on: layers 21.. slide over 4096 keys
QWEN2_WINDOW_ON = {**QWEN25_05B, "use_sliding_window": True, "sliding_window": 4096}
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256,
}
DEEPSEEK_MLA = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 256,
    "intermediate_size": 512, "moe_intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 4, "kv_lora_rank": 64, "q_lora_rank": None, "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16, "v_head_dim": 32, "n_routed_experts": 4, "n_shared_experts": 1,
    "num_experts_per_tok": 2, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "vocab_size": 1000,
    "max_position_embeddings": 4096, "rope_theta": 10000,
}
T5_SMALL = {
    "architectures": ["T5ForConditionalGeneration"], "d_ff": 2048, "d_kv": 64, "d_model": 512,
    "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1, "initializer_factor": 1.0,
    "is_encoder_decoder": True, "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512,
    "num_decoder_layers": 6, "num_heads": 8, "num_layers": 6, "pad_token_id": 0,
    "relative_attention_num_buckets": 32, "vocab_size": 32128,
}

# (id, config.json, config field the refusal names, its value as the message shows it)
REFUSED = [
    ("gemma2-2b", GEMMA2_2B, "sliding_window", "sliding_window=4096"),
    ("gemma3-1b", GEMMA3_1B, "layer_types", "22 of 26 layers 'sliding_attention'"),
    ("gemma3-4b-multimodal", GEMMA3_4B, "layer_types", "29 of 34 layers 'sliding_attention'"),
    ("mistral-7b-v0.1", MISTRAL_V01, "sliding_window", "sliding_window=4096"),
    ("phi3-mini-4k", PHI3_MINI_4K, "sliding_window", "sliding_window=2047"),
    ("gpt-oss-20b", GPT_OSS_20B, "layer_types", "12 of 24 layers 'sliding_attention'"),
    ("qwen2-window-on", QWEN2_WINDOW_ON, "use_sliding_window", "use_sliding_window=True"),
]
# (id, config.json, layers, context length SGLang derives)
ACCEPTED = [
    ("qwen2-7b-instruct", QWEN2_7B_INSTRUCT, 28, 32768),
    ("qwen2.5-7b-instruct", QWEN25_7B_INSTRUCT, 28, 32768),
    ("qwen2.5-0.5b-instruct", QWEN25_05B, 24, 32768),
    ("llama-3.1-8b", LLAMA31_8B, 32, 131072),
    ("mistral-7b-v0.3", MISTRAL_V03, 32, 32768),
    ("phi3-mini-128k", PHI3_MINI_128K, 32, 131072),
]
ARCH = {cid: cfg["architectures"][0] for cid, cfg, *_ in REFUSED + ACCEPTED}


def _model_dir(tmp_path: Path, name: str, config: dict) -> str:
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def _refusal(hf_config, config: SWAAConfig = SWAA, **kwargs) -> str:
    with pytest.raises(ValueError) as e:
        check_model_config(config, hf_config, **kwargs)
    return str(e.value)


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_native_window_refused_naming_field_value_and_architecture(case, tmp_path):
    cid, raw, field, shown = case
    hf_config = read_hf_config(_model_dir(tmp_path, cid, raw))
    assert native_sliding_window(hf_config)[0] == field
    message = _refusal(hf_config)
    assert message.startswith(f"model: {ARCH[cid]} "), message
    assert field in message and shown in message, message
    assert "SWAA adapts full-attention models only" in message
    assert "\n" not in message
    # the raw config.json (no transformers __post_init__) is judged the same way
    assert native_sliding_window(raw) is not None


@pytest.mark.parametrize("case", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_declared_but_inactive_window_accepted(case, tmp_path):
    cid, raw, layers, context = case
    hf_config = read_hf_config(_model_dir(tmp_path, cid, raw))
    assert native_sliding_window(hf_config) is None
    assert native_sliding_window(raw) is None
    assert derived_context_length(hf_config) == context
    assert check_model_config(SWAA, hf_config) is SWAA
    # the layer count is the model's: one past the last layer is out of range
    message = _refusal(hf_config, SWAAConfig(sliding_window_size=64, non_sliding_layers=[layers]))
    assert message.startswith("non_sliding_layers: ") and f"this model has {layers} layers" in message, message


@pytest.mark.parametrize("model_dir", BENCH_MODELS, ids=[p.name for p in BENCH_MODELS])
def test_repo_benchmark_models_accepted(model_dir):
    raw = json.loads((model_dir / "config.json").read_text())
    hf_config = read_hf_config(str(model_dir))
    assert native_sliding_window(hf_config) is None
    assert check_model_config(SWAAConfig.from_dict({"preset": "balanced"}), hf_config).keep_first == 100
    assert hf_config.num_hidden_layers == raw["num_hidden_layers"]


def test_benchmark_models_cover_the_target_families():
    types = {json.loads((p / "config.json").read_text())["model_type"] for p in BENCH_MODELS}
    assert {"llama", "qwen2", "qwen3", "qwen3_moe"} <= types


def test_gemma2_refused_whatever_layer_types_says(tmp_path):
    """SGLang's Gemma 2 windows every even layer whenever the config has sliding_window."""
    all_full = {**GEMMA2_2B, "layer_types": ["full_attention"] * 26}
    assert native_sliding_window(read_hf_config(_model_dir(tmp_path, "g2", all_full))) == ("sliding_window", 4096)


def test_transformers_config_classes(tmp_path):
    """The same verdicts from transformers' own config classes (defaults as each family ships them)."""
    from transformers import (Gemma2Config, Gemma3TextConfig, GptOssConfig, Llama4TextConfig, LlamaConfig,
                              MistralConfig, Phi3Config, Qwen2Config, Qwen3Config, Qwen3MoeConfig)

    refused = {
        "Gemma2": (Gemma2Config(), "sliding_window"),
        "Gemma3": (Gemma3TextConfig(), "layer_types"),
        "GptOss": (GptOssConfig(), "layer_types"),
        "Mistral": (MistralConfig(), "sliding_window"),  # the class default is v0.1's 4096
        "Phi3": (Phi3Config(sliding_window=2047), "sliding_window"),
        "Qwen3-window-on": (Qwen3Config(use_sliding_window=True, max_window_layers=20), "use_sliding_window"),
        "Qwen3Moe-window-on": (Qwen3MoeConfig(use_sliding_window=True), "use_sliding_window"),
        "Llama4Text": (Llama4TextConfig(), "layer_types"),  # chunked local attention on 3 of 4 layers
    }
    for name, (cfg, field) in refused.items():
        assert native_sliding_window(cfg) is not None and native_sliding_window(cfg)[0] == field, name
        assert f"model: {cfg.model_type} " in _refusal(cfg), name  # no architectures: the model type is named
    # Qwen classes default to sliding_window 4096 with use_sliding_window false
    for cfg in (Qwen2Config(), Qwen3Config(), Qwen3MoeConfig(), LlamaConfig(), MistralConfig(sliding_window=None),
                Phi3Config()):
        assert native_sliding_window(cfg) is None, type(cfg).__name__
        check_model_config(SWAA, cfg)


def test_json_model_override_args_applied_like_sglang(tmp_path):
    mistral = _model_dir(tmp_path, "mistral", MISTRAL_V01)
    assert native_sliding_window(read_hf_config(mistral)) == ("sliding_window", 4096)
    # SGLang sets each override on the config: a null window makes v0.1 full attention
    assert native_sliding_window(read_hf_config(mistral, json.dumps({"sliding_window": None}))) is None
    v03 = _model_dir(tmp_path, "v03", MISTRAL_V03)
    assert native_sliding_window(read_hf_config(v03, '{"sliding_window": 1024, "swaa": {"keep_first": 4}}')) == (
        "sliding_window", 1024)
    # a dict value updates the sub-config of a multimodal wrapper in place
    gemma3 = read_hf_config(_model_dir(tmp_path, "g3", GEMMA3_4B), json.dumps({"text_config": {"sliding_window": 77}}))
    assert gemma3.sliding_window == 77 and gemma3.num_hidden_layers == 34
    # SWAA's own eviction keys (SGLang's hybrid-SWA switch, window W - 1) are not a native window
    qwen3 = str(ROOT / "benchmarks" / "models" / "qwen3-0.6b")
    ours = {"swaa": {"sliding_window_size": 64, "evict_window": True}, "is_hybrid_swa": True,
            "sliding_window_size": 63, "hybrid_layer_pattern": [1] * 27 + [0]}
    assert native_sliding_window(read_hf_config(qwen3, json.dumps(ours))) is None
    for bad in ("{not json", "[1, 2]"):
        with pytest.raises(ValueError, match="^json_model_override_args: "):
            read_hf_config(qwen3, bad)


def test_unreadable_config_names_model_path(tmp_path):
    """No config.json, or a remote URL SGLang pulls itself: a ValueError subclass naming model_path."""
    with pytest.raises(ModelConfigUnreadable, match="^model_path: cannot read the HF config of .*allowed: "):
        read_hf_config(str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelConfigUnreadable, match="^model_path: .*allowed: a config.json with a model_type"):
        read_hf_config(str(tmp_path / "empty"))
    with pytest.raises(ModelConfigUnreadable, match="^model_path: 's3://bucket/model' is a remote URL"):
        read_hf_config("s3://bucket/model")


def test_context_length_derived_as_sglang_does():
    """The first context key, times a RoPE factor unless the scaling names its original length."""
    assert derived_context_length({"max_position_embeddings": 32768}) == 32768
    assert derived_context_length({"max_position_embeddings": 32768, "seq_length": 8192}) == 8192
    yarn = {"rope_type": "yarn", "factor": 4.0}
    assert derived_context_length({"max_position_embeddings": 32768, "rope_scaling": yarn}) == 131072
    assert derived_context_length({"max_position_embeddings": 32768, "rope_parameters": yarn}) == 131072
    assert derived_context_length(GPT_OSS_20B) == 131072  # yarn with original_max_position_embeddings
    assert derived_context_length(LLAMA31_8B) == 131072  # llama3 scaling
    assert derived_context_length({"model_type": "made_up"}) == 2048


def test_unknown_model_type_read_as_raw_config(tmp_path):
    """A family AutoConfig does not know (registered only inside SGLang) is judged on its config.json."""
    raw = {"architectures": ["MadeUpForCausalLM"], "model_type": "made_up_lm", "num_hidden_layers": 8,
           "max_position_embeddings": 8192, "sliding_window": 1024}
    hf_config = read_hf_config(_model_dir(tmp_path, "made-up", raw))
    assert native_sliding_window(hf_config) == ("sliding_window", 1024)
    assert _refusal(hf_config).startswith("model: MadeUpForCausalLM ")
    full = read_hf_config(_model_dir(tmp_path, "made-up-full", {**raw, "sliding_window": None}))
    assert check_model_config(SWAA, full) is SWAA
    assert _refusal(full, SWAAConfig(sliding_window_size=8, force_fa_decode=[8])).startswith("force_fa_decode: ")
    # chunked local attention declared without a layer list (a raw Llama 4 text config)
    chunked = {"model_type": "llama4_text", "attention_chunk_size": 8192, "max_position_embeddings": 10485760}
    assert native_sliding_window(chunked) == ("attention_chunk_size", 8192)


def test_mla_and_encoder_decoder_refused(tmp_path):
    mla = _refusal(read_hf_config(_model_dir(tmp_path, "mla", DEEPSEEK_MLA)))
    assert mla.startswith("model: DeepseekV3ForCausalLM uses MLA attention") and "kv_lora_rank=64" in mla, mla
    assert "allowed: models with standard" in mla
    t5 = _refusal(read_hf_config(_model_dir(tmp_path, "t5", T5_SMALL)))
    assert t5.startswith("model: T5ForConditionalGeneration is an encoder-decoder model"), t5
    assert "allowed: decoder-only" in t5


def test_layer_ids_and_sinks_validated_against_the_model():
    hf_config = read_hf_config(str(ROOT / "benchmarks" / "models" / "qwen3-0.6b"))  # 28 layers, context 40960
    message = _refusal(hf_config, SWAAConfig(sliding_window_size=64, non_sliding_layers=[1, 40]))
    assert message.startswith("non_sliding_layers: layer ids [40] are out of range; this model has 28 layers")
    message = _refusal(hf_config, SWAAConfig(sliding_window_size=64, force_fa_decode="every:4:30"))
    assert message.startswith("force_fa_decode: pattern 'every:4:30'") and "allowed offsets 0..27" in message
    message = _refusal(hf_config, SWAAConfig(sliding_window_size=64, keep_first=50000))
    assert message.startswith("keep_first: 50000 sink tokens exceed the context length 40960")
    # the server's --context-length, when given, is the one sinks must fit in
    message = _refusal(hf_config, SWAAConfig.from_dict({"preset": "balanced"}), context_length=64)
    assert message.startswith("keep_first: 100 sink tokens exceed the context length 64")
    balanced = SWAAConfig.from_dict({"preset": "balanced"})
    assert check_model_config(balanced, hf_config, context_length=128) is balanced


def test_core_module_imports_no_sglang():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'sglang': raise ImportError('sglang is blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import swaa_sglang.model_support as m\n"
        f"print(m.native_sliding_window(m.read_hf_config({str(ROOT / 'benchmarks' / 'models' / 'qwen3-0.6b')!r})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr[-2000:]
