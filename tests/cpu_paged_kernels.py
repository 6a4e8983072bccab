"""CPU stand-ins for the two Triton kernels of SGLang's paged allocator, for CPU tests at page size > 1.

``PagedTokenToKVPoolAllocator.alloc_extend`` / ``alloc_decode`` (SGLang 0.5.17,
``sglang/srt/mem_cache/allocator/paged.py``) compute the slot of every new token with
``alloc_extend_kernel[(bs,)](...)`` / ``alloc_decode_kernel[(bs,)](...)`` (Triton; no CPU driver), and
keep all the page bookkeeping (how many pages, the free list, None when too few) in Python. These
stand-ins replace only the kernels, with the same launch syntax and arguments:

* extend: SGLang's own reference, ``alloc_extend_naive`` (the NPU allocator's path for large batches);
* decode: a transcription of ``alloc_decode_kernel`` (``last_loc + 1`` inside the last page, else the
  first slot of the next free page).

Like the kernels they read ``free_pages`` without consuming it; when it holds too few pages (the
kernels then read past its end) they write -1, and the allocator returns None for that call.
:func:`patched` installs them (a context manager) or :func:`install` for good in a process of its own.
"""

from __future__ import annotations

import contextlib

import torch


def _new_pages(seq_lens: torch.Tensor, prefix_lens: torch.Tensor, page_size: int) -> torch.Tensor:
    return (seq_lens + page_size - 1) // page_size - (prefix_lens + page_size - 1) // page_size


class _Launch:
    """``kernel[grid](*args)``: the grid (one program per request) is implied by the batch."""

    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        return self.fn


def _alloc_extend(prefix_lens, seq_lens, last_loc, free_pages, out_indices, bs_upper, page_size):
    from sglang.srt.mem_cache.allocator.paged import alloc_extend_naive

    prefix_lens, seq_lens, last_loc = prefix_lens.cpu().long(), seq_lens.cpu().long(), last_loc.cpu().long()
    if int(_new_pages(seq_lens, prefix_lens, page_size).sum()) > len(free_pages):
        out_indices.fill_(-1)
        return
    alloc_extend_naive(prefix_lens, seq_lens, last_loc, free_pages.cpu(), out_indices, page_size, out_indices.device)


def _alloc_decode(seq_lens, last_loc, free_pages, out_indices, bs_upper, page_size):
    seq_lens, last_loc = seq_lens.cpu().long(), last_loc.cpu().long()
    new = _new_pages(seq_lens, seq_lens - 1, page_size)
    if int(new.sum()) > len(free_pages):
        out_indices.fill_(-1)
        return
    start = torch.cumsum(new, 0) - new  # this request's first page in free_pages
    for i in range(len(seq_lens)):
        if int(new[i]) == 0:
            out_indices[i] = last_loc[i] + 1
        else:
            out_indices[i] = free_pages[start[i]] * page_size


alloc_extend_kernel = _Launch(_alloc_extend)
alloc_decode_kernel = _Launch(_alloc_decode)


@contextlib.contextmanager
def patched():
    """Use the stand-ins in SGLang's paged allocator for the duration of the block."""
    import sglang.srt.mem_cache.allocator.paged as paged

    saved = paged.alloc_extend_kernel, paged.alloc_decode_kernel
    paged.alloc_extend_kernel, paged.alloc_decode_kernel = alloc_extend_kernel, alloc_decode_kernel
    try:
        yield
    finally:
        paged.alloc_extend_kernel, paged.alloc_decode_kernel = saved


def install() -> None:
    """For good, in a process of its own (the scheduler replay)."""
    import sglang.srt.mem_cache.allocator.paged as paged

    paged.alloc_extend_kernel, paged.alloc_decode_kernel = alloc_extend_kernel, alloc_decode_kernel
