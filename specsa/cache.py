"""Paged KV cache with an incrementally maintained compressed-KV cache.

A page holds one NSA selection block (l' tokens), so a selected block is one page.
Each sequence owns a slot: a row of the block table and a row of the compressed cache.
Lengths are host-side: the cache is the single source of truth for how long a sequence
is, and the number of valid compressed tokens is derived from it, so truncation (the
rollback speculation needs) invalidates compressed tokens past the new length by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from specsa.config import NSAConfig
from specsa.nsa.compression import Compression


class CacheFullError(RuntimeError):
    pass


@dataclass
class StepBatch:
    """The tokens one forward pass appends: sequence i adds query_lens[i] tokens to slot
    slots[i], which held starts[i] before; tokens are flattened in that order. The host
    lists drive per-sequence paths; the device tensors are all a captured step reads."""

    slots: list[int]
    starts: list[int]
    query_lens: list[int]
    token_slots: Tensor  # [N] int64
    positions: Tensor  # [N] int64
    seq_slots: Tensor  # [B] int32
    seq_lens: Tensor  # [B] int32, lengths after the step
    # C, verifier queries per sparse-attention program; None: the kernel's default. A
    # captured step takes the one `specsa profile` measured fastest for its shape.
    query_group: int | None = None

    @property
    def query_len(self) -> int | None:
        """T when every sequence adds T tokens (one kernel call serves the batch), else None."""
        return self.query_lens[0] if len(set(self.query_lens)) == 1 else None

    def sequence(self, i: int) -> StepBatch:
        """The part of the step that belongs to sequence i."""
        first = sum(self.query_lens[:i])
        rows = slice(first, first + self.query_lens[i])
        return StepBatch([self.slots[i]], [self.starts[i]], [self.query_lens[i]], self.token_slots[rows],
                         self.positions[rows], self.seq_slots[i : i + 1], self.seq_lens[i : i + 1])  # fmt: skip

    def spans(self):
        """(index, first row, last row + 1) of each sequence's tokens."""
        row = 0
        for i, n in enumerate(self.query_lens):
            yield i, row, row + n
            row += n


def step_positions(slots: list[int], starts: list[int], query_lens: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(slot of each new token, its position, each sequence's length after the step) for a
    step that appends query_lens[i] tokens to slots[i], which held starts[i]."""
    token_slots = [slot for slot, n in zip(slots, query_lens) for _ in range(n)]
    positions = [p for start, n in zip(starts, query_lens) for p in range(start, start + n)]
    return token_slots, positions, [start + n for start, n in zip(starts, query_lens)]


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
        # One extra slot, `scratch_slot`, with one page: padding rows of a captured batch
        # write there, and so do compressed tokens a step does not complete.
        num_pages = max_seqs * pages_per_seq + 1
        shape = (num_layers, num_pages, page_size, num_kv_heads, head_dim)
        self.k_pages = torch.zeros(shape, dtype=dtype, device=device)
        self.v_pages = torch.zeros(shape, dtype=dtype, device=device)
        self.block_table = torch.full((max_seqs + 1, pages_per_seq), -1, dtype=torch.long, device=device)
        self.scratch_slot = max_seqs
        self.block_table[self.scratch_slot, 0] = num_pages - 1
        self.lengths = [0] * max_seqs
        self._free_pages = list(range(num_pages - 2, -1, -1))
        self._free_slots = list(range(max_seqs - 1, -1, -1))
        self._pages_of: list[list[int]] = [[] for _ in range(max_seqs)]
        if nsa is not None:
            cmp_shape = (num_layers, max_seqs + 1, max(nsa.num_cmp_tokens(max_len), 1), num_kv_heads, head_dim)
            self.k_cmp = torch.zeros(cmp_shape, dtype=dtype, device=device)
            self.v_cmp = torch.zeros(cmp_shape, dtype=dtype, device=device)

    # ------------------------------------------------------------------ slots

    def allocate(self) -> int:
        if not self._free_slots:
            raise CacheFullError("Every cache slot is in use: free a sequence or make the cache larger.")
        slot = self._free_slots.pop()
        self.lengths[slot] = 0
        return slot

    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    def free(self, slot: int) -> None:
        """The slot and its pages go back to the pools."""
        self.truncate(slot, 0)
        pages = self._pages_of[slot]
        self.block_table[slot, : len(pages)] = -1
        self._free_pages.extend(reversed(pages))
        pages.clear()
        self._free_slots.append(slot)

    def extend(self, slot: int, num_tokens: int) -> int:
        """Reserve room for `num_tokens` more tokens; returns the old length."""
        start = self.lengths[slot]
        end = start + num_tokens
        if end > self.max_len:
            raise CacheFullError(f"A sequence would reach {end} tokens; the cache holds {self.max_len}.")
        pages = self._pages_of[slot]
        needed = -(-end // self.page_size) - len(pages)
        if needed > len(self._free_pages):
            raise CacheFullError("The KV cache has no free page left.")
        if needed > 0:
            new_pages = [self._free_pages.pop() for _ in range(needed)]
            # one host-to-device copy for them all (prefill time unchanged on the H100,
            # within 2%: each copy waited for the GPU's queue, so one wait was left)
            self.block_table[slot, len(pages) : len(pages) + needed] = torch.tensor(new_pages)
            pages.extend(new_pages)
        self.lengths[slot] = end
        return start

    def reserve(self, slots: list[int], query_lens: list[int]) -> list[int]:
        """Room for a forward pass that appends query_lens[i] tokens to slots[i] (host work
        only); returns the lengths before it."""
        return [self.extend(slot, n) for slot, n in zip(slots, query_lens)]

    def step(self, slots: list[int], query_lens: list[int]) -> StepBatch:
        """`reserve`, and the step's positions on the device."""
        starts = self.reserve(slots, query_lens)
        token_slots, positions, seq_lens = step_positions(slots, starts, query_lens)
        # One host-to-device copy for the whole step (four would each block on the host).
        packed = torch.tensor(token_slots + positions + slots + seq_lens).to(self.block_table.device)
        token_slots_t, positions_t, seq_slots_t, seq_lens_t = packed.split([len(positions)] * 2 + [len(slots)] * 2)
        return StepBatch(slots, starts, query_lens, token_slots_t, positions_t, seq_slots_t.int(), seq_lens_t.int())

    def truncate(self, slot: int, length: int) -> None:
        """Forget everything at positions >= length (compressed tokens included). The
        sequence keeps its pages until `free`: a speculative step's rollback and the next
        step's tokens then cost no page bookkeeping and no block-table copy."""
        if not 0 <= length <= self.lengths[slot]:
            raise ValueError(f"Cannot truncate a sequence of {self.lengths[slot]} tokens to {length}.")
        self.lengths[slot] = length

    # ------------------------------------------------------------------ data

    def _token_index(self, slot: int, start: int, end: int) -> tuple[Tensor, Tensor]:
        positions = torch.arange(start, end, device=self.block_table.device)
        return self.block_table[slot, positions // self.page_size], positions % self.page_size

    def keys_values(self, layer: int, slot: int) -> tuple[Tensor, Tensor]:
        """The sequence's raw k, v [S, Hkv, D] as contiguous copies."""
        page, offset = self._token_index(slot, 0, self.lengths[slot])
        return self.k_pages[layer, page, offset], self.v_pages[layer, page, offset]

    def _flat_index(self, token_slots: Tensor, positions: Tensor) -> Tensor:
        """Row of each (slot, position) in the layer's pages viewed as [pages·l', Hkv, D]."""
        return self.block_table[token_slots, positions // self.page_size] * self.page_size + positions % self.page_size

    def append(
        self, layer: int, k: Tensor, v: Tensor, token_slots: Tensor, positions: Tensor, phi_k: Compression, phi_v: Compression
    ) -> None:
        """Store a step's new tokens k, v [N, Hkv, D] (slots, positions [N], reserved with
        `extend`) and every compressed token they complete. Device work only, no host sync,
        so a decode step can be captured in a CUDA graph."""
        k_flat, v_flat = self.k_pages[layer].flatten(0, 1), self.v_pages[layer].flatten(0, 1)
        rows = self._flat_index(token_slots, positions)
        k_flat[rows] = k
        v_flat[rows] = v
        if self.nsa is None:
            return
        # Position p completes compressed token i when p = i·d + l - 1; it covers [i·d, i·d + l).
        first = positions - (self.nsa.cmp_block - 1)  # [N]
        completes = (first >= 0) & (first % self.nsa.cmp_stride == 0)
        covered = first.clamp(min=0)[:, None] + torch.arange(self.nsa.cmp_block, device=first.device)  # [N, l]
        block_rows = self._flat_index(token_slots[:, None], covered)
        target_slot = torch.where(completes, token_slots, self.scratch_slot)
        target = torch.where(completes, first.clamp(min=0) // self.nsa.cmp_stride, 0)
        self.k_cmp[layer, target_slot, target] = phi_k(k_flat[block_rows][None])[0]
        self.v_cmp[layer, target_slot, target] = phi_v(v_flat[block_rows][None])[0]

    def compressed(self, layer: int, slot: int) -> tuple[Tensor, Tensor]:
        """The sequence's valid compressed k, v [Nc, Hkv, D]."""
        count = self.nsa.num_cmp_tokens(self.lengths[slot])
        return self.k_cmp[layer, slot, :count], self.v_cmp[layer, slot, :count]
