"""Paged KV cache with an incrementally maintained compressed-KV cache.

A page holds one NSA selection block (l' tokens), so a selected block is one page.
Each sequence owns a slot: a row of the block table and a row of the compressed cache.
Lengths are host-side: the cache is the single source of truth for how long a sequence
is, and the number of valid compressed tokens is derived from it, so truncation (the
rollback speculation needs) invalidates compressed tokens past the new length by itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from specsa.config import NSAConfig
from specsa.nsa.compression import Compression, compress


class CacheFullError(RuntimeError):
    pass


class PagedKVCache:
    def __init__(
        self,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_seqs: int,
        max_len: int,
        page_size: int,
        nsa: NSAConfig | None,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        self.page_size = page_size
        self.max_len = max_len
        self.nsa = nsa
        pages_per_seq = -(-max_len // page_size)
        num_pages = max_seqs * pages_per_seq
        shape = (num_layers, num_pages, page_size, num_kv_heads, head_dim)
        self.k_pages = torch.zeros(shape, dtype=dtype, device=device)
        self.v_pages = torch.zeros(shape, dtype=dtype, device=device)
        self.block_table = torch.full((max_seqs, pages_per_seq), -1, dtype=torch.long, device=device)
        self.lengths = [0] * max_seqs
        self._free_pages = list(range(num_pages - 1, -1, -1))
        self._free_slots = list(range(max_seqs - 1, -1, -1))
        self._pages_of: list[list[int]] = [[] for _ in range(max_seqs)]
        if nsa is not None:
            cmp_shape = (num_layers, max_seqs, max(nsa.num_cmp_tokens(max_len), 1), num_kv_heads, head_dim)
            self.k_cmp = torch.zeros(cmp_shape, dtype=dtype, device=device)
            self.v_cmp = torch.zeros(cmp_shape, dtype=dtype, device=device)

    # ------------------------------------------------------------------ slots

    def allocate(self) -> int:
        if not self._free_slots:
            raise CacheFullError("Every cache slot is in use: free a sequence or make the cache larger.")
        slot = self._free_slots.pop()
        self.lengths[slot] = 0
        return slot

    def free(self, slot: int) -> None:
        self.truncate(slot, 0)
        self._free_slots.append(slot)

    def extend(self, slot: int, num_tokens: int) -> int:
        """Reserve room for `num_tokens` more tokens; returns the old length."""
        start = self.lengths[slot]
        end = start + num_tokens
        if end > self.max_len:
            raise CacheFullError(f"A sequence would reach {end} tokens; the cache holds {self.max_len}.")
        pages = self._pages_of[slot]
        while len(pages) * self.page_size < end:
            if not self._free_pages:
                raise CacheFullError("The KV cache has no free page left.")
            page = self._free_pages.pop()
            self.block_table[slot, len(pages)] = page
            pages.append(page)
        self.lengths[slot] = end
        return start

    def truncate(self, slot: int, length: int) -> None:
        """Forget everything at positions >= length (compressed tokens included)."""
        if not 0 <= length <= self.lengths[slot]:
            raise ValueError(f"Cannot truncate a sequence of {self.lengths[slot]} tokens to {length}.")
        self.lengths[slot] = length
        pages = self._pages_of[slot]
        keep = -(-length // self.page_size)
        while len(pages) > keep:
            self.block_table[slot, len(pages) - 1] = -1
            self._free_pages.append(pages.pop())

    # ------------------------------------------------------------------ data

    def _token_index(self, slot: int, start: int, end: int) -> tuple[Tensor, Tensor]:
        positions = torch.arange(start, end, device=self.block_table.device)
        return self.block_table[slot, positions // self.page_size], positions % self.page_size

    def write(self, layer: int, slot: int, start: int, k: Tensor, v: Tensor) -> None:
        """Store k, v [T, Hkv, D] at positions start … start+T-1 (already reserved)."""
        page, offset = self._token_index(slot, start, start + k.shape[0])
        self.k_pages[layer, page, offset] = k
        self.v_pages[layer, page, offset] = v

    def keys_values(self, layer: int, slot: int) -> tuple[Tensor, Tensor]:
        """The sequence's raw k, v [S, Hkv, D] as contiguous copies."""
        page, offset = self._token_index(slot, 0, self.lengths[slot])
        return self.k_pages[layer, page, offset], self.v_pages[layer, page, offset]

    def update_compressed(
        self, layer: int, slot: int, old_length: int, phi_k: Compression, phi_v: Compression
    ) -> None:
        """Compress the tokens completed since the sequence was `old_length` long."""
        first = self.nsa.num_cmp_tokens(old_length)
        last = self.nsa.num_cmp_tokens(self.lengths[slot])
        if last == first:
            return
        # Only the raw tokens the new compressed tokens cover: [first·d, (last-1)·d + l).
        stride, block = self.nsa.cmp_stride, self.nsa.cmp_block
        page, offset = self._token_index(slot, first * stride, (last - 1) * stride + block)
        k, v = self.k_pages[layer, page, offset], self.v_pages[layer, page, offset]
        self.k_cmp[layer, slot, first:last] = compress(k[None], self.nsa, phi_k)[0]
        self.v_cmp[layer, slot, first:last] = compress(v[None], self.nsa, phi_v)[0]

    def compressed(self, layer: int, slot: int) -> tuple[Tensor, Tensor]:
        """The sequence's valid compressed k, v [Nc, Hkv, D]."""
        count = self.nsa.num_cmp_tokens(self.lengths[slot])
        return self.k_cmp[layer, slot, :count], self.v_cmp[layer, slot, :count]
