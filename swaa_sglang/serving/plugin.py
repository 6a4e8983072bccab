"""SGLang plugin entry point (group ``sglang.srt.plugins``): registers the ``swaa`` backend and its hooks.

SGLang calls :func:`load` in every process it starts and swallows exceptions raised inside it, so
this module makes its own failures loud: an SGLang release the seam does not match
(:mod:`swaa_sglang.serving.seam`), or a registration that fails, exits the process with the
reason instead of leaving the server to half-apply the plugin or fail later with "invalid
choice: 'swaa'".
"""

from __future__ import annotations

import logging
import sys
import traceback

from . import seam
from .server_args import BACKEND_NAME

logger = logging.getLogger("swaa_sglang")

_registered = False


def all_hooks() -> tuple[seam.Hook, ...]:
    """Every hook the plugin applies, as the hook modules declare them."""
    from . import batch_marking, eviction_hooks, startup_hooks

    return (*startup_hooks.HOOKS, *batch_marking.HOOKS, *eviction_hooks.HOOKS,
            *eviction_hooks.ADMISSION_RESERVE_HOOKS, *eviction_hooks.ADMISSION_ONE_CHUNK_HOOKS)


def register() -> None:
    """Verify the seam, then register the backend, its CLI choice, the eviction cache and every hook. Idempotent."""
    global _registered
    if _registered:
        return
    seam.verify()
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    from sglang.srt.mem_cache.registry import get_radix_cache_factory, register_radix_cache_backend
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    from .checks import create_swaa_backend
    from .eviction_hooks import RADIX_CACHE_NAME, _radix_cache_factory

    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])
    if BACKEND_NAME not in ATTENTION_BACKENDS:
        register_attention_backend(BACKEND_NAME)(create_swaa_backend)
    if get_radix_cache_factory(RADIX_CACHE_NAME) is None:
        register_radix_cache_backend(RADIX_CACHE_NAME, _radix_cache_factory)
    seam.register(all_hooks())  # window-eviction hooks are no-ops unless the config turns eviction on
    _registered = True
    logger.info("swaa: attention backend registered")


def load() -> None:
    """The entry point. A seam mismatch or a registration failure ends the process with the reason."""
    try:
        register()
    except seam.SeamError as e:  # one line naming the SGLang version and the symbol
        sys.exit(f"swaa-sglang: {e}")
    except Exception as e:  # SGLang would log and continue; we stop instead
        traceback.print_exc()
        sys.exit(f"swaa-sglang plugin failed to register the '{BACKEND_NAME}' attention backend: {e!r}")
