"""swaa_sglang.hf: SWAA as a transformers attention implementation, checked against the rule.

Ground truths, all independent of swaa_sglang.hf:
* stock transformers with eager attention (the "swaa" function does the same float ops, so a
  config that masks nothing must give bit-identical logits);
* a masked computation: the model's own ``eager_attention_forward`` fed, per layer, an additive
  mask made from :func:`swaa_sglang.reference.visibility_mask` over the whole sequence (no cache),
  with rows at positions >= the prompt length marked as decode rows. A greedy loop of such
  full forwards is the reference for ``generate``: a token's KV depends only on what its own
  row saw, so recomputing the sequence gives what incremental decoding must give.

SmolLM2 (Llama) runs on its real weights in float32; Qwen2, Qwen3 and Qwen3-MoE on tiny
random-weight configs.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, DynamicCache

from swaa_sglang import SWAAConfig, visibility_mask
from swaa_sglang import hf

TEXT = (
    "The old lighthouse stood at the edge of the cliff for more than two hundred years. Every night its keeper "
    "climbed the 117 steps to light the lamp, and every morning he wrote the weather, the ships he had seen and "
    "the state of the sea into a thick leather book. When the keeper retired in 1962, the book had 4,380 pages. "
    "Nobody in the village had read all of them, but everybody knew the story of the storm of 1911, when the "
    "light went out for eleven minutes and a fishing boat called the Mary Ellen"
)

# -- the masked reference ------------------------------------------------------------------
REF_IMPL = "swaa_test_reference"
_ref_masks: dict[int, torch.Tensor] = {}


def _reference_attention(module, query, key, value, attention_mask, **kwargs):
    """The model's own eager attention, with this layer's mask from visibility_mask instead of the model's."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    return eager(module, query, key, value, _ref_masks[module.layer_idx], **kwargs)


AttentionInterface.register(REF_IMPL, _reference_attention)


@contextlib.contextmanager
def attn_impl(model, name: str) -> Iterator[None]:
    old = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(old)


def additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, 0.0, torch.finfo(torch.float32).min)


def reference_logits(model, ids: torch.Tensor, config: SWAAConfig, prompt_len: int | None = None) -> torch.Tensor:
    """Logits ``[n, V]`` of one unpadded sequence ``[1, n]``; positions >= prompt_len are decode rows."""
    n = ids.shape[1]
    pos = torch.arange(n, device=ids.device)
    decode = pos >= (n if prompt_len is None else prompt_len)
    _ref_masks.clear()
    for layer in range(model.config.num_hidden_layers):
        _ref_masks[layer] = additive(visibility_mask(config, layer, pos, pos, decode))[None, None]
    with attn_impl(model, REF_IMPL), torch.no_grad():
        return model(ids, use_cache=False).logits[0]


def _eos_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def reference_greedy(model, prompt: torch.Tensor, config: SWAAConfig, n_new: int):
    """Greedy tokens ``[n_new]`` and raw logits ``[n_new, V]`` from full masked forwards (EOS suppressed)."""
    seq, logits = prompt, []
    for _ in range(n_new):
        last = reference_logits(model, seq, config, prompt_len=prompt.shape[1])[-1]
        logits.append(last)
        scores = last.clone()
        scores[_eos_ids(model)] = float("-inf")  # as min_new_tokens does in generate
        seq = torch.cat([seq, scores.argmax().view(1, 1)], dim=1)
    return seq[0, prompt.shape[1] :], torch.stack(logits)


def swaa_generate(model, config: SWAAConfig, ids: torch.Tensor, n_new: int, attention_mask=None):
    """Greedy ``generate`` under ``config``: tokens ``[B, n_new]`` and raw logits ``[B, n_new, V]``."""
    hf.attach(model, config)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids) if attention_mask is None else attention_mask,
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.logits, dim=1)


def forward(model, config: SWAAConfig, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    hf.attach(model, config)
    with torch.no_grad():
        return model(ids, **kwargs).logits


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def swaa_model(smollm2_path):
    return hf.load_model(smollm2_path, SWAAConfig(), dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def text_ids(smollm2_tokenizer) -> torch.Tensor:
    ids = smollm2_tokenizer(TEXT, return_tensors="pt").input_ids
    assert ids.shape[1] >= 100
    return ids[:, :100]


# -- registration and attach -------------------------------------------------------------------
def test_register_is_idempotent():
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    hf.register()
    hf.register()
    assert ALL_ATTENTION_FUNCTIONS["swaa"] is hf.swaa_attention_forward
    assert "swaa" in ALL_MASK_ATTENTION_FUNCTIONS


def test_attach_validates_against_the_model():
    model = tiny_model("qwen3")  # 3 layers
    with pytest.raises(ValueError, match="^non_sliding_layers: layer ids \\[3\\] are out of range"):
        hf.attach(model, SWAAConfig(sliding_window_size=4, non_sliding_layers=[1, 3]))
    with pytest.raises(ValueError, match="^force_fa_decode: layers \\[1\\] are in non_sliding_layers"):
        hf.attach(model, SWAAConfig(sliding_window_size=4, non_sliding_layers=[1], force_fa_decode=[1]))
    with pytest.raises(TypeError):
        hf.attach(model, {"sliding_window_size": 4})
    hf.attach(model, SWAAConfig(sliding_window_size=4, non_sliding_layers="odd", force_fa_decode="even"))
    assert model.config._attn_implementation == "swaa"
    assert hf.swaa_config_of(model) == SWAAConfig(
        sliding_window_size=4, non_sliding_layers=[1], force_fa_decode=[0, 2]
    )


def test_swaa_without_attach_fails_loudly():
    hf.register()
    model = tiny_model("qwen2", attn_implementation="swaa")
    with pytest.raises(ValueError, match="attach"):
        model(torch.tensor([[1, 2, 3]]))


def test_models_with_native_sliding_layers_are_rejected():
    """The HF reference refuses what the server refuses (model_support): an active native window,
    named by its config field; a declared but inactive window (Qwen2's default) is accepted."""
    from transformers import MistralConfig, Qwen2Config

    qwen2_on = Qwen2Config(**TINY_DIMS, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    with pytest.raises(ValueError, match=r"native sliding window \(use_sliding_window=True, sliding_window=8\)"):
        hf.attach(AutoModelForCausalLM.from_config(qwen2_on), SWAAConfig(sliding_window_size=4))
    mistral = MistralConfig(**TINY_DIMS, sliding_window=8)
    with pytest.raises(ValueError, match=r"native sliding window \(sliding_window=8\)"):
        hf.attach(AutoModelForCausalLM.from_config(mistral), SWAAConfig(sliding_window_size=4))
    qwen2_off = Qwen2Config(**TINY_DIMS, use_sliding_window=False, sliding_window=8, max_window_layers=1)
    model = hf.attach(AutoModelForCausalLM.from_config(qwen2_off), SWAAConfig(sliding_window_size=4))
    assert hf.swaa_config_of(model) is not None


def test_static_cache_is_rejected():
    """Keys of a StaticCache do not end with the current queries: positions cannot be derived, so refuse."""
    model = hf.attach(tiny_model("qwen3"), SWAAConfig(sliding_window_size=6, keep_first=2))
    with pytest.raises(ValueError, match="DynamicCache"):
        model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=2, cache_implementation="static", do_sample=False)


# -- SmolLM2, real weights: forward ----------------------------------------------------------------
@pytest.mark.slow
def test_no_window_is_bitwise_stock_eager(swaa_model, smollm2_stock, text_ids):
    """Stock *eager*: the swaa function does its float ops. (SDPA's fused kernels round differently.)"""
    with torch.no_grad():
        stock = smollm2_stock(text_ids).logits
    n = text_ids.shape[1]
    for config in (
        SWAAConfig(),
        SWAAConfig(sliding_window_size=n),  # a window that covers the input masks nothing
        SWAAConfig(sliding_window_size=n, keep_first=10, force_fa_decode=True, non_sliding_layers="odd"),
    ):
        assert torch.equal(forward(swaa_model, config, text_ids), stock), config
    assert not torch.equal(forward(swaa_model, SWAAConfig(sliding_window_size=n - 1), text_ids), stock)


@pytest.mark.slow
def test_no_window_left_padded_batch_is_bitwise_stock_eager(swaa_model, smollm2_stock, smollm2_tokenizer):
    tok = smollm2_tokenizer
    tok.padding_side = "left"
    batch = tok([TEXT[:200], TEXT[:90]], return_tensors="pt", padding=True)
    assert not bool(batch.attention_mask.all())
    with torch.no_grad():
        stock = smollm2_stock(**batch).logits
    assert torch.equal(forward(swaa_model, SWAAConfig(), batch.input_ids, attention_mask=batch.attention_mask), stock)


@pytest.mark.slow
def test_short_window_is_the_masked_computation(swaa_model, smollm2_stock, text_ids):
    config = SWAAConfig(sliding_window_size=16, keep_first=4)
    got = forward(swaa_model, config, text_ids)
    with torch.no_grad():
        stock = smollm2_stock(text_ids).logits
        # Every layer slides: stock eager with one custom 4D mask made from the rule.
        pos = torch.arange(text_ids.shape[1])
        masked = smollm2_stock(text_ids, attention_mask=additive(visibility_mask(config, 0, pos, pos))[None, None])
    assert (got - stock).abs().max() > 1.0  # the window matters on this input...
    assert torch.equal(got[0, :16], stock[0, :16])  # ...but not before position W
    assert torch.equal(got, masked.logits)  # and it is exactly the rule
    assert torch.equal(got[0], reference_logits(smollm2_stock, text_ids, config))


@pytest.mark.slow
def test_full_layers_and_decode_rows_follow_the_rule_per_layer(swaa_model, smollm2_stock, text_ids):
    uniform = SWAAConfig(sliding_window_size=16, keep_first=4)
    mixed = SWAAConfig(sliding_window_size=16, keep_first=4, non_sliding_layers="every:3")
    got = forward(swaa_model, mixed, text_ids)
    assert torch.equal(got[0], reference_logits(smollm2_stock, text_ids, mixed))
    assert (got - forward(swaa_model, uniform, text_ids)).abs().max() > 1.0

    # Rows at positions >= 60 declared generated: with FA decode they see everything.
    fa = SWAAConfig(sliding_window_size=16, keep_first=4, force_fa_decode=True)
    with_decode = forward(swaa_model, fa, text_ids, swaa_prompt_len=60)
    assert torch.equal(with_decode[0], reference_logits(smollm2_stock, text_ids, fa, prompt_len=60))
    windowed = forward(swaa_model, uniform, text_ids)
    assert torch.equal(with_decode[0, :60], windowed[0, :60])
    assert (with_decode[0, 60:] - windowed[0, 60:]).abs().amax(-1).min() > 0.1  # every decode row changed


# -- SmolLM2: generate ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_fa_decode_changes_generation_exactly_where_the_rule_says(swaa_model, text_ids):
    # Prompt of L=20 tokens, W=28, k=2. A decode query at position i sees every earlier key iff
    # i < W + k, so FA decode changes nothing until the query at position W + k = 30, which
    # produces generated token number W + k - L + 1 = 11 (token 0 comes from the prefill).
    L, W, k = 20, 28, 2
    prompt = text_ids[:, :L]
    on_tokens, on_logits = swaa_generate(swaa_model, SWAAConfig(W, k, force_fa_decode=True), prompt, 16)
    off_tokens, off_logits = swaa_generate(swaa_model, SWAAConfig(W, k, force_fa_decode=False), prompt, 16)
    first = W + k - L + 1
    assert torch.equal(on_logits[:, :first], off_logits[:, :first])
    assert torch.equal(on_tokens[:, : first + 1], off_tokens[:, : first + 1])
    assert not torch.allclose(on_logits[:, first], off_logits[:, first], atol=1e-3)


@pytest.fixture(scope="module")
def long_prompt_generations(swaa_model, text_ids):
    """Prompt of 40 tokens (longer than W: the prefill itself slides), 16 new tokens, three FA decode settings."""
    prompt = text_ids[:, :40]
    configs = {
        "on": SWAAConfig(16, 4, force_fa_decode=True),
        "off": SWAAConfig(16, 4, force_fa_decode=False),
        "even": SWAAConfig(16, 4, force_fa_decode="even"),
    }
    return prompt, configs, {name: swaa_generate(swaa_model, c, prompt, 16) for name, c in configs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("fa", ["on", "off", "even"])
def test_generate_matches_the_masked_greedy_loop(long_prompt_generations, smollm2_stock, fa):
    prompt, configs, runs = long_prompt_generations
    tokens, logits = runs[fa]
    ref_tokens, ref_logits = reference_greedy(smollm2_stock, prompt, configs[fa], 16)
    assert torch.equal(tokens[0], ref_tokens)
    torch.testing.assert_close(logits[0], ref_logits, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_per_layer_fa_decode_is_its_own_setting(long_prompt_generations):
    _, _, runs = long_prompt_generations
    # The prefill (token 0) does not depend on FA decode; every decode step does.
    for name in ("off", "even"):
        assert torch.equal(runs["on"][1][:, 0], runs[name][1][:, 0])
    for a, b in (("on", "off"), ("on", "even"), ("off", "even")):
        assert not torch.allclose(runs[a][1][:, 1], runs[b][1][:, 1], atol=1e-3), (a, b)


@pytest.mark.slow
def test_left_padded_batch_generates_like_single_runs(swaa_model, text_ids):
    config = SWAAConfig(16, 4, force_fa_decode="odd", non_sliding_layers=[5])
    prompts = [text_ids[:, :40], text_ids[:, 50:75]]
    width = max(p.shape[1] for p in prompts)
    ids = torch.full((2, width), 2, dtype=torch.long)  # pad = <|im_end|>, on the left
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - p.shape[1] :] = p[0]
        mask[row, width - p.shape[1] :] = 1
    batch_tokens, batch_logits = swaa_generate(swaa_model, config, ids, 12, attention_mask=mask)
    for row, p in enumerate(prompts):
        tokens, logits = swaa_generate(swaa_model, config, p, 12)
        assert torch.equal(batch_tokens[row], tokens[0]), row
        torch.testing.assert_close(batch_logits[row], logits[0], atol=1e-3, rtol=0)


@pytest.mark.slow
def test_chunked_prefill_is_prompt_when_told(swaa_model, text_ids):
    """A prompt fed in chunks (the last one a single token) is still prompt; no "q_len == 1" shortcut."""
    config = SWAAConfig(16, 4, force_fa_decode=True)
    prompt = text_ids[:, :40]
    one_shot = forward(swaa_model, config, prompt)[0, -1]

    def chunked(**kwargs) -> torch.Tensor:
        cache = DynamicCache(config=swaa_model.config)
        with torch.no_grad():
            for lo, hi in ((0, 30), (30, 39), (39, 40)):
                out = swaa_model(prompt[:, lo:hi], past_key_values=cache, **kwargs)
        return out.logits[0, -1]

    hf.attach(swaa_model, config)
    torch.testing.assert_close(chunked(swaa_prompt_len=40), one_shot, atol=1e-4, rtol=0)
    with hf.prompt_length(swaa_model, 40):
        torch.testing.assert_close(chunked(), one_shot, atol=1e-4, rtol=0)
    # Without being told, a chunk after the first forward counts as generated (FA decode: sees all).
    assert not torch.allclose(chunked(), one_shot, atol=1e-2)


# -- tiny random Qwen2 / Qwen3 / Qwen3-MoE --------------------------------------------------------
TINY_DIMS = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.3,  # peaky attention, so windows make a visible difference
)


def tiny_model(kind: str, attn_implementation: str = "eager"):
    from transformers import Qwen2Config, Qwen3Config, Qwen3MoeConfig

    if kind == "qwen2":
        config = Qwen2Config(**TINY_DIMS)
    elif kind == "qwen3":
        config = Qwen3Config(**TINY_DIMS, head_dim=16)
    elif kind == "qwen3_moe":
        config = Qwen3MoeConfig(
            **TINY_DIMS, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32
        )
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn_implementation)
    return model.eval()


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "qwen3_moe"])
def test_tiny_models_forward_and_generate(kind):
    model = tiny_model(kind)
    assert model.config.num_hidden_layers == 3
    ids = torch.randint(3, 128, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stock = model(ids).logits
    assert torch.equal(forward(model, SWAAConfig(), ids), stock)

    # Layer 1 full; layer 0 sliding with FA decode; layer 2 sliding with windowed decode.
    config = SWAAConfig(sliding_window_size=6, keep_first=2, non_sliding_layers=[1], force_fa_decode=[0])
    got = forward(model, config, ids)
    assert torch.equal(got[0], reference_logits(model, ids, config))
    assert (got - stock).abs().max() > 1e-2

    prompt = ids[:, :10]
    tokens, logits = swaa_generate(model, config, prompt, 12)
    ref_tokens, ref_logits = reference_greedy(model, prompt, config, 12)
    assert torch.equal(tokens[0], ref_tokens)
    torch.testing.assert_close(logits[0], ref_logits, atol=1e-4, rtol=0)
    no_fa = SWAAConfig(sliding_window_size=6, keep_first=2, non_sliding_layers=[1])
    _, no_fa_logits = swaa_generate(model, no_fa, prompt, 12)
    assert not torch.allclose(no_fa_logits, logits, atol=1e-4)


# -- CLI ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_generates_greedily_with_the_chat_template(smollm2_path, capsys):
    assert hf.main(["--prompt", "What is the capital of France?", "--model-path", smollm2_path,
                    "--swaa-preset", "sink10-2k", "--max-new-tokens", "12", "--device", "cpu"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "Paris" in captured.out
    assert '"sliding_window_size": 2048' in captured.err and '"keep_first": 10' in captured.err


def test_cli_config_flags():
    """The reference CLI takes the server's --swaa-* flags (swaa_sglang.cli), without window eviction."""
    parse = hf.build_parser().parse_args
    args = parse(["--prompt", "x", "--swaa-preset", "balanced", "--swaa-window", "512", "--swaa-fa-decode", "even"])
    assert hf.build_config(args) == SWAAConfig(512, 100, force_fa_decode="even", non_sliding_layers="odd")
    args = parse(["--prompt", "x", "--swaa-window", "64", "--swaa-keep-first", "4", "--swaa-full-layers", "every:4:3"])
    assert hf.build_config(args) == SWAAConfig(64, 4, non_sliding_layers="every:4:3")
    assert hf.build_config(parse(["--prompt", "x"])) == SWAAConfig()
    with pytest.raises(SystemExit):
        hf.main(["--prompt", "x", "--swaa-window", "-3"])
    with pytest.raises(SystemExit):  # a serving memory knob, not a flag of the reference
        parse(["--prompt", "x", "--swaa-evict-window", "on"])
