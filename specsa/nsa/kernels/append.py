"""Appending a step's keys and values to the paged cache in one Triton launch: the raw
tokens, and the mean-pooled compressed tokens they complete (`PagedKVCache.append` is the
PyTorch reference; a learned compression φ stays there).

Grid (N, Hkv): program (i, h) writes token i's head h; if that token completes compressed
token c (position = c·d + l - 1) it also averages the l raw tokens c·d … position. Those
may belong to this same step, written by other programs at the same time, so they are
read from the step's input when they are in it (tokens of one sequence are consecutive
rows in position order) and from the cache otherwise.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from specsa.launch import pdl_options, pdl_prologue


@triton.jit
def _append_kernel(
    k_ptr,  # [N, Hkv, D] the step's new keys
    v_ptr,
    token_slots_ptr,  # [N] int64
    positions_ptr,  # [N] int64
    block_table_ptr,  # [slots, max_pages] int64
    k_pages_ptr,  # [pages, PAGE, Hkv, D]
    v_pages_ptr,
    k_cmp_ptr,  # [slots, C, Hkv, D]
    v_cmp_ptr,
    stride_kn,
    stride_kh,
    stride_bt,
    stride_pp,
    stride_pt,
    stride_ph,
    stride_cs,
    stride_cc,
    stride_ch,
    CMP_BLOCK: tl.constexpr,
    CMP_STRIDE: tl.constexpr,
    PAGE: tl.constexpr,
    D: tl.constexpr,
    COMPRESS: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_prologue(PDL)
    i_n, i_h = tl.program_id(0), tl.program_id(1)
    o_d = tl.arange(0, D)
    slot = tl.load(token_slots_ptr + i_n)
    position = tl.load(positions_ptr + i_n)
    page = tl.load(block_table_ptr + slot * stride_bt + position // PAGE)
    p_new = i_n * stride_kn + i_h * stride_kh + o_d
    p_page = page * stride_pp + (position % PAGE) * stride_pt + i_h * stride_ph + o_d
    tl.store(k_pages_ptr + p_page, tl.load(k_ptr + p_new))
    tl.store(v_pages_ptr + p_page, tl.load(v_ptr + p_new))
    if COMPRESS:
        _append_compressed(
            k_ptr, v_ptr, token_slots_ptr, positions_ptr, block_table_ptr, k_pages_ptr, v_pages_ptr, k_cmp_ptr,
            v_cmp_ptr, i_n, i_h, slot, position, stride_kn, stride_kh, stride_bt, stride_pp, stride_pt, stride_ph,
            stride_cs, stride_cc, stride_ch, CMP_BLOCK, CMP_STRIDE, PAGE, D,
        )  # fmt: skip


@triton.jit
def _append_compressed(
    k_ptr, v_ptr, token_slots_ptr, positions_ptr, block_table_ptr, k_pages_ptr, v_pages_ptr, k_cmp_ptr, v_cmp_ptr,
    i_n, i_h, slot, position, stride_kn, stride_kh, stride_bt, stride_pp, stride_pt, stride_ph, stride_cs, stride_cc,
    stride_ch, CMP_BLOCK: tl.constexpr, CMP_STRIDE: tl.constexpr, PAGE: tl.constexpr, D: tl.constexpr,
):  # fmt: skip
    """The compressed token ending at `position`, if there is one: the mean of its l tokens."""
    o_d = tl.arange(0, D)
    first = position - (CMP_BLOCK - 1)
    if (first >= 0) & (first % CMP_STRIDE == 0):
        o_t = tl.arange(0, CMP_BLOCK)
        covered = first + o_t  # [l] positions
        row = i_n - (position - covered)  # [l] where they would sit in this step's input
        in_step = row >= 0
        in_step &= tl.load(token_slots_ptr + row, mask=in_step, other=-1) == slot
        in_step &= tl.load(positions_ptr + row, mask=in_step, other=-1) == covered
        pages = tl.load(block_table_ptr + slot * stride_bt + covered // PAGE, mask=~in_step, other=0)
        p_cached = pages[:, None] * stride_pp + (covered % PAGE)[:, None] * stride_pt + i_h * stride_ph + o_d[None, :]
        p_step = row[:, None] * stride_kn + i_h * stride_kh + o_d[None, :]
        m_step = in_step[:, None]
        b_k = tl.where(m_step, tl.load(k_ptr + p_step, mask=m_step, other=0.0),
                       tl.load(k_pages_ptr + p_cached, mask=~m_step, other=0.0))  # [l, D]
        b_v = tl.where(m_step, tl.load(v_ptr + p_step, mask=m_step, other=0.0),
                       tl.load(v_pages_ptr + p_cached, mask=~m_step, other=0.0))  # fmt: skip
        p_cmp = slot * stride_cs + (first // CMP_STRIDE) * stride_cc + i_h * stride_ch + o_d
        tl.store(k_cmp_ptr + p_cmp, (tl.sum(b_k.to(tl.float32), 0) / CMP_BLOCK).to(k_cmp_ptr.dtype.element_ty))
        tl.store(v_cmp_ptr + p_cmp, (tl.sum(b_v.to(tl.float32), 0) / CMP_BLOCK).to(v_cmp_ptr.dtype.element_ty))


def append_paged(cache, layer: int, k: Tensor, v: Tensor, token_slots: Tensor, positions: Tensor) -> None:
    """Store k, v [N, Hkv, D] of a step, and their mean-pooled compressed tokens (if the
    cache keeps them), into `cache` (a PagedKVCache) at layer `layer`."""
    if k.stride() != v.stride() or k.stride(2) != 1:  # the kernel reads both with k's strides
        k, v = k.contiguous(), v.contiguous()
    k_pages, v_pages = cache.k_pages[layer], cache.v_pages[layer]
    compress = cache.nsa is not None
    k_cmp, v_cmp = (cache.k_cmp[layer], cache.v_cmp[layer]) if compress else (k_pages, v_pages)
    nsa = cache.nsa
    _append_kernel[(k.shape[0], k.shape[1])](
        k, v, token_slots, positions, cache.block_table, k_pages, v_pages, k_cmp, v_cmp,
        k.stride(0), k.stride(1), cache.block_table.stride(0), k_pages.stride(0), k_pages.stride(1), k_pages.stride(2),
        k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2),
        CMP_BLOCK=nsa.cmp_block if compress else 1, CMP_STRIDE=nsa.cmp_stride if compress else 1,
        PAGE=cache.page_size, D=k.shape[2], COMPRESS=compress, **pdl_options(k.device),
    )  # fmt: skip
