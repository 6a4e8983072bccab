"""SGLang 0.5.17 glue: what SWAA supports, checked at start, and the backend creator.

Everything version-specific about SGLang's server args and model runner lives
here; the backend itself only extends the FlashInfer backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from swaa_sglang.config import SWAAConfig
from swaa_sglang.server_args import BACKEND_NAME, MISSING_CONFIG_HELP, config_from_override_args


@dataclass(frozen=True)
class ModelFacts:
    """What the check needs to know about the model being served."""

    num_layers: int
    context_len: int
    use_mla: bool = False
    native_sliding_window: Optional[int] = None  # the model already has SWA layers (Gemma, ...)
    is_encoder_decoder: bool = False


def _get(server_args: Any, name: str, default=None):
    return getattr(server_args, name, default)


def check_server_args(server_args: Any) -> SWAAConfig:
    """Refuse what SWAA cannot serve correctly; return the config. Raises ValueError naming the field."""
    config = config_from_override_args(_get(server_args, "json_model_override_args"))
    if config is None:
        raise ValueError(MISSING_CONFIG_HELP)
    for phase in ("prefill_attention_backend", "decode_attention_backend"):
        other = _get(server_args, phase)
        if other not in (None, BACKEND_NAME):
            raise ValueError(
                f"{phase}: '{other}' would run one phase without SWAA; with --attention-backend swaa "
                f"leave it unset or set it to 'swaa'"
            )
    if _get(server_args, "speculative_algorithm"):
        raise ValueError(
            f"speculative_algorithm: '{server_args.speculative_algorithm}' is not supported with SWAA "
            "(draft and verify passes would attend without the window); allowed: none"
        )
    if _get(server_args, "enable_mis"):
        raise ValueError("enable_mis: multi-item scoring is not supported with SWAA; allowed: off")
    return config


def check_model(config: SWAAConfig, model: ModelFacts) -> SWAAConfig:
    """Refuse models SWAA cannot serve; validate layer ids against the model."""
    if model.use_mla:
        raise ValueError("model: MLA attention (DeepSeek-style latent KV) is not supported by SWAA; "
                         "allowed: models with standard multi-head or grouped-query attention")
    if model.native_sliding_window is not None:
        raise ValueError(
            f"model: this model already has native sliding-window layers (window {model.native_sliding_window}); "
            "SWAA adapts full-attention models only"
        )
    if model.is_encoder_decoder:
        raise ValueError("model: encoder-decoder models are not supported by SWAA; allowed: decoder-only models")
    return config.validate(model.num_layers, context_length=model.context_len)


def create_swaa_backend(runner: Any):
    """``ATTENTION_BACKENDS['swaa']``: runs in every scheduler / TP worker process."""
    from .swaa_flashinfer import SWAAFlashInferBackend

    config = check_server_args(runner.server_args)
    mc = runner.model_config
    facts = ModelFacts(
        num_layers=mc.num_hidden_layers,
        context_len=mc.context_len,
        use_mla=bool(runner.use_mla_backend),
        native_sliding_window=runner.sliding_window_size,
        is_encoder_decoder=bool(mc.is_encoder_decoder),
    )
    check_model(config, facts)
    return SWAAFlashInferBackend(runner, config)
