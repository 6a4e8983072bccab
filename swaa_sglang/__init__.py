"""swaa-sglang: Sliding Window Attention Adaptation (arXiv:2512.10411) for SGLang.

Light imports only: sglang and transformers are imported by the submodules that need them.
"""

from .config import PRESETS, SWAAConfig, preset_config
from .reference import masked_attention, swaa_attention, visibility_mask

__all__ = ["PRESETS", "SWAAConfig", "preset_config", "masked_attention", "swaa_attention", "visibility_mask"]
__version__ = "0.1.0"
