"""SGLang's hybrid-SWA radix cache taught SWAA sinks (:class:`SWAASinkRadixCache`).

SGLang's ``SWARadixCache`` (hybrid full + SWA pool) keeps only a window per request; SWAA also
needs the first k tokens. This subclass:

- never lets a node straddle the sink boundary ``K = ceil(k / page) * page``;
- SWA-locks the nodes of ``[0, K)`` on every path a request locks ("sink lock"), released in
  ``dec_lock_ref``, so SWA LRU eviction cannot free sinks something depends on;
- treats ``[0, K)`` as live on ``insert`` even when the request's ``swa_evicted_seqlen``
  frontier lies past it (requests carry ``swa_evict_floor = K``, so the sinks were kept);
- cuts a match back to the first SWA tombstone that starts inside the sinks.

It is built with SGLang's window: its ``sliding_window_size`` (SGLang's name, here and in
every ``CacheInitParams``) is W - 1, :attr:`swaa_sglang.config.SWAAConfig.sglang_window`, not
SWAA's W. It switches on SGLang's leaf split on insert (:func:`require_split_leaf_on_insert`).
Design: docs/design/eviction.md.
"""

from __future__ import annotations

import logging
import os

from .eviction_policy import sink_floor  # noqa: F401  (re-exported for the cache's users)

# -- SGLang 0.5.17 integration ------------------------------------------------------
try:  # the policy above must stay importable without SGLang
    from sglang.srt.mem_cache.base_prefix_cache import (
        DecLockRefParams,
        DecLockRefResult,
        EvictParams,
        EvictResult,
        IncLockRefResult,
        InsertParams,
        InsertResult,
    )
    from sglang.srt.mem_cache.swa_radix_cache import SWARadixCache

    _HAVE_SGLANG = True
except ImportError:  # pragma: no cover - exercised only without SGLang
    _HAVE_SGLANG = False
    SWARadixCache = object  # type: ignore[assignment,misc]


logger = logging.getLogger(__name__)

SPLIT_LEAF_ENV = "SGLANG_OPT_SWA_SPLIT_LEAF_ON_INSERT"


def require_split_leaf_on_insert() -> None:
    """Switch on SGLang's ``SGLANG_OPT_SWA_SPLIT_LEAF_ON_INSERT`` in this process; refuse an explicit off.

    ``SWARadixCache.inc_lock_ref`` SWA-locks whole nodes until they cover the window, and with
    chunked prefill the last node of a request that has finished its prefill is its whole last
    chunk (8,192 tokens, not a 2,047-token window). SGLang admits by the full pool, so with
    window eviction (full pool sized for about 99 requests of 128K, SWA pool for about 53 such
    locks) the parked requests fill the SWA pool, every decode step retracts one of them, and its
    131K-token prefill is thrown away: 104 requests of 128K made no request finish in 11 minutes
    on an H200. SGLang's fix, behind this switch (off by default in 0.5.17, read at every insert),
    splits a new leaf to its last window so the lock covers only that.
    """
    from sglang.srt.environ import envs

    flag = envs.SGLANG_OPT_SWA_SPLIT_LEAF_ON_INSERT
    if not flag.is_set():
        flag.set(True)
    elif not flag.get():
        raise ValueError(
            f"{SPLIT_LEAF_ENV}={os.environ[SPLIT_LEAF_ENV]!r}: window eviction needs SGLang's leaf split on insert "
            f"(unset it or set it to 1); without it long requests retract each other without end (docs/design/eviction.md)"
        )


class SWAASinkRadixCache(SWARadixCache):  # type: ignore[misc,valid-type]
    """SGLang's hybrid-SWA radix cache with SWAA sinks. ``params.sliding_window_size`` is SGLang's W - 1."""

    def __init__(self, params, keep_first: int):
        if not _HAVE_SGLANG:  # pragma: no cover
            raise ImportError("SWAASinkRadixCache needs sglang")
        if keep_first < 0:
            raise ValueError(f"keep_first: must be >= 0; got {keep_first}")
        if params.sliding_window_size is None or params.sliding_window_size < 1:
            raise ValueError(
                f"sliding_window_size: the SWA radix cache needs SGLang's window W - 1 >= 1; "
                f"got {params.sliding_window_size}"
            )
        from sglang.srt.mem_cache.allocator.swa import PureSWATokenToKVPoolAllocator

        if isinstance(params.token_to_kv_pool_allocator, PureSWATokenToKVPoolAllocator):
            raise ValueError(
                "SWAASinkRadixCache needs the hybrid (full + SWA) allocator; SGLang chose the all-SWA "
                "allocator because no layer keeps full KV (see docs/design/eviction.md, 'all layers windowed')"
            )
        require_split_leaf_on_insert()
        self.keep_first = keep_first
        self.sink_len = sink_floor(keep_first, params.page_size)
        super().__init__(params)
        self.decode_swa_headroom = self._decode_headroom(params.token_to_kv_pool_allocator)

    def _decode_headroom(self, allocator) -> int:
        """What the admission hooks (``attention_backends.admission``) reserve per decoding request.

        Capped so that a new request (sinks, window, two pages of chunk) and its reservation fit an
        empty SWA pool: in a smaller pool a long generation would otherwise never be admitted.
        (A request prefilled in chunks can lock more than one window; ``reserve_chunked_growth``
        limits its own reservation for that.)
        """
        from sglang.srt.environ import envs

        from .admission import decode_swa_headroom

        full = decode_swa_headroom(self.sliding_window_size, envs.SGLANG_SWA_EVICTION_INTERVAL.get(), self.page_size)
        size_swa = getattr(allocator, "size_swa", None)
        if size_swa is None:
            return full
        room = max(0, size_swa - (self.sink_len + self.sliding_window_size + 2 * self.page_size))
        if room < full:
            logger.warning(
                "swaa: SWA pool of %d tokens holds one request's sinks and window but not %d decode tokens "
                "beside them; admission reserves %d per decoding request, and generations longer than that "
                "may be retracted (raise --swa-full-tokens-ratio)", size_swa, full, room,
            )
        return min(full, room)

    # -- tree geometry -------------------------------------------------------------
    def _path(self, node) -> list:
        """Nodes from the root's child down to ``node`` (root excluded)."""
        path = []
        while node is not None and node is not self.root_node:
            path.append(node)
            node = node.parent
        path.reverse()
        return path

    def _sink_nodes(self, node) -> list:
        """Nodes on the path to ``node`` that start inside the sink region ``[0, K)``."""
        if self.sink_len == 0:
            return []
        out, start = [], 0
        for n in self._path(node):
            if start >= self.sink_len:
                break
            out.append(n)
            start += len(n.value)
        return out

    def _split_at_sink_boundary(self, key) -> None:
        """Split the node of ``key``'s path that straddles ``K`` (insert may create one)."""
        K = self.sink_len
        if K == 0 or len(key) <= K:
            return
        node, start = self.root_node, 0
        while start < K and len(key) > 0:
            child = node.children.get(key.child_key(self.page_size))
            if child is None:
                return
            n = len(child.key)
            if start < K < start + n:
                self._split_node(child.key, child, K - start)
                return
            matched = child.key.match(key, page_size=self.page_size)
            if matched < n:
                return
            node, start, key = child, start + n, key[n:]

    # -- insert: sinks are live whatever the eviction frontier says -------------------
    def insert(self, params: InsertParams) -> InsertResult:
        K = self.sink_len
        key = params.key
        if self.disable or K == 0 or params.swa_evicted_seqlen <= 0 or len(key) == 0:
            result = super().insert(params)
        else:
            # SGLang's frontier (swa_evicted_seqlen) claims [prev_prefix_len, frontier) was
            # freed; [0, K) was protected by Req.swa_evict_floor, so insert it live first.
            prev = params.prev_prefix_len
            value = params.value
            if prev < K:
                super().insert(InsertParams(key=key[:K], value=value[:K], prev_prefix_len=prev))
            result = super().insert(
                InsertParams(
                    key=key,
                    value=value,
                    prev_prefix_len=max(prev, K),
                    swa_evicted_seqlen=max(params.swa_evicted_seqlen, K),
                )
            )
        self._split_at_sink_boundary(key.page_aligned(self.page_size))
        return result

    # -- match: cut back before a tombstoned sink -------------------------------------
    def _match_prefix_helper(self, key):
        value, best_node, best_len = super()._match_prefix_helper(key)
        if self.sink_len == 0 or best_len == 0:
            return value, best_node, best_len
        start = 0
        for idx, n in enumerate(self._path(best_node)):
            if start >= self.keep_first:
                break
            if n.swa_tombstone:  # a sink of this prefix is gone: only [0, start) is reusable
                return value, (n.parent if idx > 0 else self.root_node), idx
            start += len(n.value)
        return value, best_node, best_len

    # -- SWA eviction: sinks last ---------------------------------------------------------
    def _idle_sink_nodes(self) -> list:
        """Live nodes starting below ``K`` that no request SWA-locks."""
        out, stack = [], [(c, 0) for c in self.root_node.children.values()]
        while stack:
            n, start = stack.pop()
            if start >= self.sink_len:
                continue
            if not n.swa_tombstone and n.swa_lock_ref == 0:
                out.append(n)
            stack.extend((c, start + len(n.value)) for c in n.children.values())
        return out

    def evict(self, params: EvictParams) -> EvictResult:
        """SGLang's eviction, with the sinks of idle paths freed only when nothing else is left.

        SGLang's SWA LRU frees the nodes nearest the root first, i.e. the sinks: K slots whose loss
        makes every hit through them 0 (``_match_prefix_helper``) while the rest of the path keeps
        its SWA slots. Here the SWA pass runs with idle sinks held (SWA-locked, so
        ``get_lru_no_lock`` skips them), then, if still short, once more without.
        """
        if self.disable or self.sink_len == 0 or params.swa_num_tokens <= 0:
            return super().evict(params)
        # full pass first, as SGLang does (a held sink leaf must not be deleted by it)
        r = super().evict(EvictParams(num_tokens=params.num_tokens, swa_num_tokens=0))
        full, swa = r.num_tokens_evicted, r.swa_num_tokens_evicted
        if swa < params.swa_num_tokens:
            held = self._idle_sink_nodes()
            self._swa_lock(held, +1)
            try:
                r = super().evict(EvictParams(swa_num_tokens=params.swa_num_tokens - swa))
            finally:  # a held node is never tombstoned nor deleted by the SWA pass
                self._swa_lock(held, -1)
            full, swa = full + r.num_tokens_evicted, swa + r.swa_num_tokens_evicted
        if swa < params.swa_num_tokens:  # only sinks are left
            r = super().evict(EvictParams(swa_num_tokens=params.swa_num_tokens - swa))
            full, swa = full + r.num_tokens_evicted, swa + r.swa_num_tokens_evicted
        return EvictResult(num_tokens_evicted=full, swa_num_tokens_evicted=swa)

    # -- locks: sinks are SWA-locked by every request whose path reaches them ------------
    def _sink_lock(self, node, delta: int) -> None:
        self._swa_lock(self._sink_nodes(node), delta)

    def _swa_lock(self, nodes, delta: int) -> None:
        """SWA-lock (+1) or unlock (-1) ``nodes``, moving them between SWA-evictable and -protected."""
        for n in nodes:
            if delta > 0:
                assert not n.swa_tombstone, f"sink lock on a tombstoned sink node {n.id}"
                if n.swa_lock_ref == 0:
                    self.swa_evictable_size_ -= len(n.value)
                    self.swa_protected_size_ += len(n.value)
                n.swa_lock_ref += 1
            else:
                assert n.swa_lock_ref > 0, f"sink unlock on node {n.id} with swa_lock_ref 0"
                assert not n.swa_tombstone, f"sink unlock on a tombstoned sink node {n.id}"
                if n.swa_lock_ref == 1:
                    self.swa_evictable_size_ += len(n.value)
                    self.swa_protected_size_ -= len(n.value)
                n.swa_lock_ref -= 1

    def inc_lock_ref(self, node) -> IncLockRefResult:
        result = super().inc_lock_ref(node)
        if not self.disable:
            self._sink_lock(node, +1)
        return result

    def dec_lock_ref(self, node, params: DecLockRefParams | None = None, skip_swa: bool = False) -> DecLockRefResult:
        # Always release the sink lock, also with skip_swa=True (SGLang's early window-lock
        # release, dec_swa_lock_only, never touches the sink lock).
        if not self.disable:
            self._sink_lock(node, -1)
        return super().dec_lock_ref(node, params, skip_swa=skip_swa)


def make_radix_cache_factory(keep_first: int):
    """A ``register_radix_cache_backend`` factory building :class:`SWAASinkRadixCache`.

    The window comes from ``ctx.params.sliding_window_size``, i.e. the model runner's
    ``sliding_window_size``; the HF-config override must therefore set the window to
    W - 1 (see docs/design/eviction.md). With ``--disable-radix-cache`` it builds SGLang's
    ``SWAChunkCache`` (as the default chain does), which honours ``swa_evict_floor``
    and needs nothing more for sinks.
    """

    def factory(ctx):
        if not ctx.is_hybrid_swa:
            raise ValueError(
                "radix_cache_backend: the SWAA eviction cache needs SGLang's hybrid SWA pool "
                "(is_hybrid_swa); it is off for this model"
            )
        if ctx.disable_radix_cache:
            if ctx.full_tokens_per_layer == 0:
                raise ValueError(
                    "SWAA eviction: every layer is windowed, so SGLang would use its all-SWA pool, "
                    "whose chunk cache frees the floor range only on finish; not validated (docs/design/eviction.md)"
                )
            from sglang.srt.mem_cache.chunk_cache import SWAChunkCache

            return SWAChunkCache(ctx.params)
        return SWAASinkRadixCache(ctx.params, keep_first)

    return factory
