"""Admission with window eviction: reserve the SWA slots that running requests will still decode into.

SGLang 0.5.17's ``PrefillAdder`` reserves future decode tokens of running requests in the full
pool only (``_get_running_request_total_token_offset``); its SWA budget starts at zero on every
pass and charges a new request no more than its own chunk. With window eviction the full pool
is sized for whole sequences and the SWA pool for windows, so for prompts shorter than the
launcher sized for, admission fills the SWA pool with parked windows; every running request
then still grows by up to a window of decode tokens, decode runs out of SWA slots, and
``retract_decode`` throws prefills away. A retracted request's window is SWA-evicted under that
pressure, so its whole prefill is redone (CPU replay: 300 requests of 16K in and 8K out with
the launcher's pools prefilled 3.98 tokens per prompt token, with 854 retractions).

A decoding request owns about ``decode_swa_headroom`` SWA slots at most beyond its prompt (its
window of decode tokens plus what SGLang frees only every ``SGLANG_SWA_EVICTION_INTERVAL``
decode iterations); what it may still add is that minus what it owns now, and never more than
it has left to decode. Hooks on ``PrefillAdder`` (declared and registered by
``swaa_sglang.serving.eviction_hooks``; no-ops unless the tree cache is
:class:`~attention_backends.radix_cache.SWAASinkRadixCache`) charge it:

* AFTER ``__init__``: the growth of every running request, into ``rem_swa_token_offset``;
* BEFORE ``add_chunked_req``: the growth of the request being prefilled in chunks (it is not in
  the running batch), before its next chunk is sized;
* AFTER ``_swa_reserved_tokens``: a new request's own decode growth, beyond the part of a window
  SGLang already reserves for it (used by both its SWA gate and its chunk cap).

A request is then admitted only when the SWA pool can carry it and everything already running
to the end of their generations; when it cannot, admission waits for running requests to
finish, which they can, since their growth is reserved. Two limits keep a small pool from
waiting for ever: the cache caps the headroom so that a new request fits an empty pool, and
with nothing else running, the chunked request's reservation never leaves its next chunk less
than a page (past those limits SGLang's retraction applies). The headroom is an estimate of
SGLang's freeing cadence, not a hard bound (a prefill batch on a maintenance iteration defers the
freeing, and enough of them in a row defer it further): a request that outgrows it meets
SGLang's ordinary retraction, as without these hooks.

A fourth hook (AROUND ``add_one_req``) keeps SGLang's own invariant that a prefill batch holds at
most one partly prefilled request. When the SWA pool is tight, ``add_one_req`` cuts a request to
the chunk the pool allows (``_swa_chunk_cap``), below the chunk budget, so the pass goes on; if a
later request with fewer tokens left to decode is cut too, it replaces the first as
``new_chunked_req`` (``has_chunked_req`` is never read), and the scheduler then treats the first
as fully prefilled: it decodes from part of its prompt, and SGLang's window eviction frees slots
past its real KV (in the CPU replay, a live sink node of the tree lost its SWA slots). The hook
ends the pass with the request that was cut, as SGLang does when a chunk uses up the chunk budget.
"""

from __future__ import annotations

from collections.abc import Callable


def decode_swa_headroom(sglang_window: int, eviction_interval: int, page_size: int) -> int:
    """SWA slots a decoding request owns at most beyond its prompt, as SGLang frees them.

    SGLang keeps the last ``sglang_window`` (W - 1) positions and frees older ones on decode iterations
    that are multiples of the eviction interval; a prefill batch on such an iteration defers the
    freeing by one more interval, hence two intervals, and a page for page alignment.
    """
    return sglang_window + 2 * max(1, eviction_interval) + page_size


def _ceil_page(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size) * page_size


def owned_swa_slots(req, page_size: int = 1) -> int:
    """SWA slots the request owns past its prompt (allocated, not going to the tree, not freed).

    The prompt's slots go to the tree when the prefill result is processed. With the overlap
    scheduler the next pass is planned before that, while ``cache_protected_len`` is still the
    matched prefix; until the request's first decode step (``decode_batch_idx`` 0, also after a
    retraction) the end of its prefill, ``extend_range.end`` page-floored, is where the tree's part
    ends. Later ``extend_range`` is not the prefill's (``--enable-mixed-chunk`` sets it to the last
    token), and ``cache_protected_len`` is right.
    """
    kv = req.kv
    if kv is None:
        return 0
    tree_end = req.cache_protected_len
    if req.extend_range is not None and req.decode_batch_idx == 0:
        tree_end = max(tree_end, req.extend_range.end // page_size * page_size)
    return max(0, kv.kv_allocated_len - max(kv.swa_evicted_seqlen, tree_end))


def _tokens_left(req) -> int:
    return max(req.sampling_params.max_new_tokens - len(req.output_ids), 0)


def running_decode_growth(req, headroom: int, page_size: int = 1) -> int:
    """SWA slots a running request may still take: up to its headroom, at most its remaining tokens
    (page-ceiled); nothing for a request that has finished but is not yet filtered out."""
    if req.finished():
        return 0
    return _ceil_page(min(_tokens_left(req), max(0, headroom - owned_swa_slots(req, page_size))), page_size)


def new_request_decode_growth(extend_len: int, max_new: int, sglang_window: int, headroom: int,
                              page_size: int = 1) -> int:
    """What a new request's decode may take beyond SGLang's own reservation for it.

    SGLang reserves ``min(extend + max_new, sglang_window)`` for the request's window, of which
    ``max(0, min(extend + max_new, sglang_window) - extend)`` is room for decode tokens.
    """
    sglang_decode_room = max(0, min(extend_len + max_new, sglang_window) - extend_len)
    return _ceil_page(max(0, min(max_new, headroom) - sglang_decode_room), page_size)


def _headroom(adder) -> int | None:
    """The tree cache's decode headroom when it is the SWAA eviction cache, else None."""
    return getattr(adder.tree_cache, "decode_swa_headroom", None)


def reserve_running_growth(result: None, adder) -> None:
    """AFTER hook on ``PrefillAdder.__init__``: charge running requests' future SWA growth."""
    headroom = _headroom(adder)
    if headroom is None or not adder.is_hybrid_swa or adder.running_batch is None:
        return None
    page = adder.page_size
    adder.rem_swa_token_offset += sum(running_decode_growth(r, headroom, page) for r in adder.running_batch.reqs)
    return None


def reserve_chunked_growth(adder, req) -> None:
    """BEFORE hook on ``PrefillAdder.add_chunked_req``: the chunked request's decode growth, for the pass.

    With nothing else running, never so much that its next chunk gets less than a page: the request
    locks its earlier chunks' window (more than one window when the last chunk was short), and in a
    small pool it would otherwise wait for ever; past that it meets SGLang's retraction instead.
    While others run it waits for them (their growth is reserved, so they finish), which keeps its
    chunks large. Its final chunk charges the growth again through ``_swa_reserved_tokens``:
    conservative, for the rest of that one pass only.
    """
    headroom = _headroom(adder)
    if headroom is None or not adder.is_hybrid_swa:
        return None
    page = adder.page_size
    growth = _ceil_page(min(_tokens_left(req), headroom), page)
    running = adder.running_batch.reqs if adder.running_batch is not None else []
    if not any(not r.finished() for r in running):
        growth = min(growth, max(0, int(adder.rem_swa_tokens) - 2 * page))
    adder.rem_swa_token_offset += growth
    return None


def reserve_new_request_growth(result: int, adder, extend_input_len: int, max_new_tokens: int) -> int | None:
    """AFTER hook on ``PrefillAdder._swa_reserved_tokens``: add a new request's own decode growth."""
    headroom = _headroom(adder)
    if headroom is None:
        return None
    return result + new_request_decode_growth(
        extend_input_len, max_new_tokens, adder.tree_cache.sliding_window_size, headroom, adder.page_size
    )


def one_chunked_request_per_pass(proceed: Callable, adder, req):
    """AROUND hook on ``PrefillAdder.add_one_req``: end the pass after the request that was cut to a chunk.

    Returning OTHER there (not CONTINUE) stops the scheduler's loop before it preempts or matches
    the next request; NO_TOKEN passes through (it also marks the batch full).
    """
    from sglang.srt.managers.schedule_policy import AddReqResult

    result = proceed()
    if result == AddReqResult.CONTINUE and adder.new_chunked_req is req and _headroom(adder) is not None:
        return AddReqResult.OTHER
    return result
