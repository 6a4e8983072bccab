"""Admission with window eviction: reserve the SWA slots that running requests will still decode into.

SGLang 0.5.17's ``PrefillAdder`` reserves future decode tokens of running requests in the full
pool only (``_get_running_request_total_token_offset``); its SWA budget starts at zero on every
pass and charges a new request no more than its own chunk. With window eviction the full pool
is sized for whole sequences and the SWA pool for windows, so for prompts shorter than the
launcher sized for, admission fills the SWA pool with parked windows; every running request
then still grows by up to a window of decode tokens, decode runs out of SWA slots, and
``retract_decode`` throws prefills away. A retracted request's window is SWA-evicted under that
pressure, so its whole prefill is redone (CPU replay: 300 requests of 16K in and 2K out with
the launcher's pool prefilled 69% more tokens than were sent, with 222 retractions).

Each running request owns at most ``decode_swa_headroom`` SWA slots beyond its cached prefix
(its window of decode tokens plus what SGLang frees only every ``SGLANG_SWA_EVICTION_INTERVAL``
steps); what it may still add is that bound minus what it owns now, and never more than it
has left to decode. Two AFTER hooks on ``PrefillAdder`` (installed by the plugin; no-ops
unless the tree cache is :class:`~attention_backends.eviction.SWAASinkRadixCache`) charge it:

* ``__init__``: the growth of every running request, into ``rem_swa_token_offset``;
* ``_swa_reserved_tokens``: a new request's own decode growth, beyond the part of a window
  SGLang already reserves for it (used by both its SWA gate and its chunk cap).

A request is then admitted only when the SWA pool can carry it and everything already running
to the end of their generations, so decode never retracts for SWA; when it cannot, admission
waits for running requests to finish (they always can: their growth is reserved).

A third hook (AROUND ``add_one_req``) keeps SGLang's own invariant that a prefill batch holds at
most one partly prefilled request. When the SWA pool is tight, ``add_one_req`` cuts a request to
the chunk the pool allows (``_swa_chunk_cap``), below the chunk budget, so the pass goes on; if a
later request with fewer tokens left to decode is cut too, it replaces the first as
``new_chunked_req`` (``has_chunked_req`` is never read), and the scheduler then treats the first
as fully prefilled: it decodes from part of its prompt, and SGLang's window eviction frees slots
past its real KV (in the CPU replay, a live sink node of the tree lost its SWA slots). After a
request has been cut, the hook admits nothing more in that pass, as SGLang does when a chunk
uses up the chunk budget.
"""

from __future__ import annotations

_ADDER = "sglang.srt.managers.schedule_policy.PrefillAdder"
RESERVE_HOOKS = (f"{_ADDER}.__init__", f"{_ADDER}._swa_reserved_tokens")
ONE_CHUNK_HOOK = f"{_ADDER}.add_one_req"


def decode_swa_headroom(window_m1: int, eviction_interval: int, page_size: int) -> int:
    """Most SWA slots a decoding request owns beyond its cached prefix.

    SGLang keeps the last ``window_m1`` positions and frees older ones on decode iterations
    that are multiples of the eviction interval; a prefill batch on such an iteration defers the
    freeing by one more interval, hence two intervals, and a page for page alignment.
    """
    return window_m1 + 2 * max(1, eviction_interval) + page_size


def owned_swa_slots(req) -> int:
    """SWA slots the request owns now (allocated, not in the tree, not freed)."""
    kv = req.kv
    if kv is None:
        return 0
    return max(0, kv.kv_allocated_len - max(kv.swa_evicted_seqlen, req.cache_protected_len))


def running_decode_growth(req, headroom: int) -> int:
    """SWA slots a running request may still take: up to its headroom, at most its remaining tokens."""
    remaining = max(req.sampling_params.max_new_tokens - len(req.output_ids), 0)
    return min(remaining, max(0, headroom - owned_swa_slots(req)))


def new_request_decode_growth(extend_len: int, max_new: int, window_m1: int, headroom: int) -> int:
    """What a new request's decode may take beyond SGLang's own reservation for it.

    SGLang reserves ``min(extend + max_new, window)`` for the request's window, of which
    ``max(0, min(extend + max_new, window) - extend)`` is room for decode tokens.
    """
    sglang_decode_room = max(0, min(extend_len + max_new, window_m1) - extend_len)
    return max(0, min(max_new, headroom) - sglang_decode_room)


def _headroom(adder) -> int | None:
    """The tree cache's decode headroom when it is the SWAA eviction cache, else None."""
    return getattr(adder.tree_cache, "decode_swa_headroom", None)


def reserve_running_growth(result, adder, *args, **kwargs):
    """AFTER hook on ``PrefillAdder.__init__``: charge running requests' future SWA growth."""
    headroom = _headroom(adder)
    if headroom is None or not adder.is_hybrid_swa or adder.running_batch is None:
        return None
    adder.rem_swa_token_offset += sum(running_decode_growth(r, headroom) for r in adder.running_batch.reqs)
    return None


def reserve_new_request_growth(result, adder, extend_input_len, max_new_tokens, *args, **kwargs):
    """AFTER hook on ``PrefillAdder._swa_reserved_tokens``: add a new request's own decode growth."""
    headroom = _headroom(adder)
    if headroom is None:
        return None
    return result + new_request_decode_growth(
        extend_input_len, max_new_tokens, adder.tree_cache.sliding_window_size, headroom
    )


def one_chunked_request_per_pass(original, adder, req, *args, **kwargs):
    """AROUND hook on ``PrefillAdder.add_one_req``: nothing more once a request has been cut to a chunk."""
    if _headroom(adder) is not None and adder.new_chunked_req is not None:
        from sglang.srt.managers.schedule_policy import AddReqResult

        return AddReqResult.OTHER
    return original(adder, req, *args, **kwargs)


def register_admission_hooks(reserve: bool = True, one_chunk: bool = True) -> None:
    """Register the hooks with SGLang's HookRegistry (SGLang applies them in every process).

    Both switches exist for the CPU replay's controls (``tests/scheduler_replay.py``); the
    plugin registers everything.
    """
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if reserve:
        init, reserved = RESERVE_HOOKS
        HookRegistry.register(init, reserve_running_growth, HookType.AFTER)
        HookRegistry.register(reserved, reserve_new_request_growth, HookType.AFTER)
    if one_chunk:
        HookRegistry.register(ONE_CHUNK_HOOK, one_chunked_request_per_pass, HookType.AROUND)
